"""The pipeline's weight, from the source alone: lines outside ``tfnn/`` and ``tests/``,
modules over 300 lines, functions over 60, uses of private (``_name``) APIs of TensorFlow,
MLflow and Prefect, and imports inside functions.

    python benchmarks/weight.py [ROOT]
"""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
SKIP = {"tfnn", "tests", ".venv", ".git", "notebooks"}
LIBRARIES = ("mlflow", "prefect", "tensorflow", "tf")
# `mlflow.x._private`, `from prefect.y import _z`, `from mlflow._x import ...`; and a private
# method called on any object (`dataset._to_mlflow_entity()`), ours (`self._x`) aside.
PRIVATE = re.compile(
    rf"\b(?:{'|'.join(LIBRARIES)})(?:\.\w+)*\._(?!_)\w+"
    rf"|from\s+(?:{'|'.join(LIBRARIES)})[\w.]*\s+import\s+\(?\s*_(?!_)\w+"
    r"|(?<!self)(?<!cls)\._(?!_)\w+\("
)


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not SKIP & set(p.relative_to(root).parts[:1]))


def main() -> None:
    files = python_files(ROOT)
    lines = {p: len(p.read_text().splitlines()) for p in files}
    long_functions, private, inner_imports = [], [], 0
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({length})")
                inner_imports += sum(
                    isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(node)
                )
        for number, line in enumerate(text.splitlines(), 1):
            if PRIVATE.search(line.split("#", 1)[0]):
                private.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    big = [f"{p.relative_to(ROOT)} ({n})" for p, n in lines.items() if n > 300]
    print(f"python lines outside tfnn/ and tests/: {sum(lines.values())} in {len(files)} files")
    folders: dict[str, int] = {}
    for path, count in lines.items():
        top = path.relative_to(ROOT).parts[0]
        folders[top] = folders.get(top, 0) + count
    print("    " + ", ".join(f"{name}/ {count}" for name, count in sorted(folders.items())))
    print(f"modules over 300 lines: {len(big)}  {', '.join(big)}")
    print(f"functions over 60 lines: {len(long_functions)}  {', '.join(long_functions)}")
    print(f"imports inside functions: {inner_imports}")
    print(f"private-API uses: {len(private)}")
    for use in private:
        print("   ", use)


if __name__ == "__main__":
    main()
