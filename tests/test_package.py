"""The package root: PyTorch parts load on first use, and the names mean what they always meant."""

import subprocess
import sys

import prunekit


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_prunekit_does_not_import_torch():
    assert _run("import sys, prunekit, prunekit.schedules; print('torch' in sys.modules)") == "False"


def test_function_keeps_its_name_when_its_module_is_imported_first():
    # prunekit.masks and prunekit.advise are both a submodule and the function it defines
    code = (
        "import prunekit.masks, prunekit.advise, prunekit as pk, inspect;"
        "print(inspect.isfunction(pk.masks), inspect.isfunction(pk.advise))"
    )
    assert _run(code) == "True True"


def test_every_public_name_resolves():
    for name in prunekit.__all__:
        assert getattr(prunekit, name) is not None, name
    assert set(prunekit.__all__) <= set(dir(prunekit))


def test_submodules_are_attributes_as_before():
    code = "import prunekit; print(prunekit.bench.__name__, prunekit.report.__name__, prunekit.integrations.__name__)"
    assert _run(code) == "prunekit.bench prunekit.report prunekit.integrations"


def test_unknown_attribute_is_an_attribute_error():
    try:
        prunekit.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_without_torch_the_error_says_what_to_install():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import prunekit, prunekit.schedules\n"
        "prunekit.schedules.PolynomialDecay(0.0, 0.8, 0, 10)\n"
        "try:\n    prunekit.prune\nexcept ImportError as e:\n    print(e)\n"
    )
    assert "pip install torch" in _run(code)
