"""Optional libraries (the `extras`): a feature that needs one imports it with `require`, so that a missing one is
a MissingDependencyError saying what to install, the same way for every feature."""

import importlib


class MissingDependencyError(ImportError, ValueError):
    """An optional library is missing. Also a ValueError, so that the command line reports it in one line."""


def require(module: str, feature: str, package: str, extra: str = "extras"):
    """The module `module` (imported when first needed, so that the rest of postformer works without it), or a
    MissingDependencyError: "`feature` needs `package`: pip install 'postformer[extra]' (or pip install ...)"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{feature} needs {package}: pip install 'postformer[{extra}]' (or pip install {package})"
        ) from None
