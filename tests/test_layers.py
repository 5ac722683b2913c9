"""The import graph: rlvr's modules import only from their own layer or below (the order in rlvr/__init__.py),
no stage imports another, nothing is circular; verifiers and sandbox never import rlvr (nor sandbox
verifiers), and importing them loads no torch."""

import ast
import subprocess
import sys

from conftest import REPO

LAYERS = [
    {"train", "evaluate", "convert"},
    {"rl", "sft", "dpo", "reward_model", "rejection_sampling", "ai_feedback", "critique_revise"},
    {
        "run",
        "sampler",
        "vllm_sampler",
        "episodes",
        "learner",
        "rewards",
        "grading",
        "plots",
        "packing",
        "supervised",
        "judge",
        "chunks",
        "sampling",
        "async_sampler",
    },
    {"rollout", "model", "data", "checkpoint", "log"},
    {"algos", "dist", "config", "templates"},
]
STAGES = LAYERS[1]


def imports(path) -> set[str]:
    """Top-level names of the packages and rlvr modules a file imports, function-level imports included:
    'rlvr.rl', 'verifiers', 'torch', ..."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name if a.name.startswith("rlvr.") else a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "rlvr":  # from rlvr import rl, model as model_lib
                out |= {f"rlvr.{a.name}" for a in node.names}
            else:
                out.add(
                    ".".join(node.module.split(".")[:2])
                    if node.module.startswith("rlvr.")
                    else node.module.split(".")[0]
                )
    return {m for m in out if m != "rlvr.tiny"}


def graph() -> dict[str, set[str]]:
    return {
        p.stem: {m.split(".")[1] for m in imports(p) if m.startswith("rlvr.")}
        for p in (REPO / "rlvr").glob("*.py")
        if p.stem != "__init__"
    }


def layer(module: str) -> int:
    return next(i for i, mods in enumerate(LAYERS) if module in mods)


def test_every_module_has_a_layer_and_imports_only_down():
    g = graph()
    assert set(g) == set().union(*LAYERS), "a module is missing from LAYERS (and from rlvr/__init__.py's list)"
    upward = [
        f"{a} (layer {layer(a) + 1}) imports {b} (layer {layer(b) + 1})"
        for a, deps in g.items()
        for b in deps
        if layer(b) < layer(a)
    ]
    assert not upward, upward
    across = [f"stage {a} imports stage {b}" for a, deps in g.items() for b in deps if a in STAGES and b in STAGES]
    assert not across, across


def test_no_import_cycle():
    g, done, path = graph(), set(), []

    def visit(m):
        assert m not in path, f"import cycle: {' -> '.join(path[path.index(m) :] + [m])}"
        if m in done:
            return
        path.append(m)
        for dep in sorted(g[m]):
            if dep != m:
                visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(g):
        visit(m)


def test_the_checker_sees_function_level_and_aliased_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from rlvr import algos, model as model_lib\ndef f():\n    from rlvr.rl import learn\n    import torch\n"
    )
    assert imports(f) == {"rlvr.algos", "rlvr.model", "rlvr.rl", "torch"}


def test_verifiers_and_sandbox_import_down_only_and_never_torch():
    for pkg, banned in (("verifiers", {"rlvr", "torch"}), ("sandbox", {"rlvr", "verifiers", "torch"})):
        for p in (REPO / pkg).rglob("*.py"):
            bad = {m.split(".")[0] for m in imports(p)} & banned
            assert not bad, f"{p.relative_to(REPO)} imports {bad}"
    # and at run time, nothing they import pulls torch in
    code = (
        "import sys, verifiers, verifiers.math, verifiers.format, verifiers.code, verifiers.pool, sandbox; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
