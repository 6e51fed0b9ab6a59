"""The trainer stays readable: the recipe fits on a few screens, no function is too long to
read at once, and every public function is typed (checked with ast, nothing imported)."""

import ast
from pathlib import Path

TRAINER = Path(__file__).parents[2] / "turnrl" / "trainer"
#: The recipe's length and the longest function allowed anywhere in turnrl/trainer.
RECIPE_LINES, FUNCTION_LINES = 420, 80


def _functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_recipe_reads_on_a_few_screens():
    lines = len((TRAINER / "trainer.py").read_text().splitlines())
    assert lines <= RECIPE_LINES, f"turnrl/trainer/trainer.py has {lines} lines"


def test_no_long_functions():
    long = [f"{p.name}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in sorted(TRAINER.glob("*.py")) for f in _functions(p)
            if f.end_lineno - f.lineno + 1 > FUNCTION_LINES]
    assert not long, long


def test_public_functions_are_typed():
    untyped = []
    for path in sorted(TRAINER.glob("*.py")):
        for f in _functions(path):
            if f.name.startswith("_") and f.name != "__init__":
                continue
            args = [*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs]
            missing = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            missing += [f"*{v.arg}" for v in (f.args.vararg, f.args.kwarg) if v and v.annotation is None]
            if missing or f.returns is None:
                untyped.append(f"{path.name}:{f.lineno} {f.name} {missing or 'no return type'}")
    assert not untyped, untyped
