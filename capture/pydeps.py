"""The Python modules kvtrace's Python programs need, checked before they are imported.

    from pydeps import require
    require("kvcapture", ("numpy", "h5py", "torch"))

A module that cannot be imported ends the program with ONE line on stderr and exit status 1:
which module, which interpreter, the Debian package that provides it, and the interpreter to
use instead (Debian's /usr/bin/python3, where those packages install; `PYTHON=` for make),
instead of a traceback. Only the standard library is used here.
"""
import importlib
import os
import sys

# module -> Debian package (the Makefile's DEB_PKGS)
DEBIAN = {"numpy": "python3-numpy", "h5py": "python3-h5py", "torch": "python3-torch",
          "scipy": "python3-scipy"}
DEBIAN_PYTHON = "/usr/bin/python3"
EXIT_MISSING = 1


def missing_message(prog, module, err):
    """The one line for `module` failing to import with exception `err`."""
    exe = sys.executable or "python3"
    ver = ".".join(str(x) for x in sys.version_info[:3])
    why = "is not installed" if isinstance(err, ModuleNotFoundError) and err.name == module.split(".")[0] \
        else "cannot be imported (" + (" ".join(str(err).split()) or type(err).__name__)[:160] + ")"
    pkg = DEBIAN.get(module.split(".")[0], f"python3-{module}")
    use = (f"; run it with {DEBIAN_PYTHON} (make: PYTHON={DEBIAN_PYTHON})"
           if os.path.realpath(exe) != os.path.realpath(DEBIAN_PYTHON) and os.path.exists(DEBIAN_PYTHON)
           else f"; or set PYTHON= to an interpreter that has {module}")
    return (f"{prog}: error: Python module '{module}' {why} for {exe} (Python {ver}): "
            f"install Debian's {pkg} (apt-get install {pkg}, or make deps){use}")


def require(prog, modules):
    """Import each of `modules` (in order) or exit with missing_message."""
    for m in modules:
        try:
            importlib.import_module(m)
        except (ImportError, OSError) as e:    # OSError: a shared library of the module is missing
            print(missing_message(prog, m, e), file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(EXIT_MISSING)
