"""Failure alerts as a Prefect Automation (``flows/failure_alert.yaml``): the server notifies, so
a killed run (SIGKILL, out of memory) still alerts once marked Crashed, and no flow needs a hook.
``python -m flows.alerts BLOCK-TYPE/NAME`` installs it on ``$PREFECT_API_URL``'s server."""

import sys
from contextlib import suppress
from pathlib import Path

import yaml
from prefect.automations import Automation
from prefect.client.orchestration import get_client

ALERT_FILE = Path(__file__).with_name("failure_alert.yaml")


def failure_alert(block: str) -> Automation:
    """``ALERT_FILE``'s automation via block ``BLOCK-TYPE/NAME``; ``ObjectNotFound`` if none."""
    block_type, _, name = block.partition("/")
    with get_client(sync_client=True) as client:
        block_id = client.read_block_document_by_name(name, block_type).id
    spec = yaml.safe_load(ALERT_FILE.read_text())
    for action in spec["actions"]:
        action["block_document_id"] = str(block_id)
    return Automation.model_validate(spec)


def install_failure_alert(block: str) -> Automation:
    """Create the failure alert on the Prefect server, replacing one of the same name."""
    alert = failure_alert(block)
    with suppress(ValueError):  # none yet
        Automation.read(name=alert.name).delete()
    return alert.create()


if __name__ == "__main__":
    print(f"automation {install_failure_alert(sys.argv[1]).id}: {ALERT_FILE.name}")
