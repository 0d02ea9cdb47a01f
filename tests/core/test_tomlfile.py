"""`fedsilo.common.tomlfile.read_toml`: every way a named TOML file can fail is one line that
names the file, raised as the caller's own error type."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.common.tomlfile import read_toml


class MyError(ValueError):
    pass


def test_reads_a_table(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text('[run]\nrounds = 3\nname = "x"\n')
    assert read_toml(p, MyError, "--config") == {"run": {"rounds": 3, "name": "x"}}


def test_each_failure_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    cases = [
        (tmp_path / "missing.toml", f"--config: file not found: {tmp_path / 'missing.toml'}"),
        (tmp_path, f"--config: {tmp_path} is a directory, expected a TOML file"),
        (bad, f"--config: {bad} is not valid TOML (Invalid value (at line 1, column 10))"),
        (latin, f"--config: {latin} is not"),
    ]
    for path, message in cases:
        with pytest.raises(MyError) as info:
            read_toml(path, MyError, "--config")
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (as root a chmod 0 file stays readable: make the open fail as it would for a user)
    p = tmp_path / "secret.toml"
    p.write_text("a = 1\n")

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(MyError) as info:
        read_toml(p, MyError, "site config")
    assert str(info.value) == f"site config: cannot read {p} (permission denied)"
