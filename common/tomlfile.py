"""Read a TOML file the user named, with one-line errors that say which file and why.

The run config (`--config`), the deployment config and a site's config all go through
`read_toml`; each passes its own error type (so each CLI reports it as it reports the
rest of that file's problems) and the label the user knows the file by.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: Path, error: type[Exception], label: str) -> dict[str, Any]:
    """Parse ``path``; any failure raises ``error("<label>: <what went wrong>")``.

    Parameters
    ----------
    path:
        The file.
    error:
        Exception type to raise (the caller's config error).
    label:
        How the user names the file, e.g. ``"--config"`` or ``"site config"``.
    """
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise error(f"{label}: file not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{label}: {path} is a directory, expected a TOML file") from None
    except PermissionError:
        raise error(f"{label}: cannot read {path} (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{label}: {path} is not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise error(f"{label}: {path} is not UTF-8 TOML text") from None
