"""The commented example configuration stays in step with gateway/settings.py."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

from gateway import settings as settings_mod
from gateway.settings import HostPort, Settings, load

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "fax-gateway.example.toml"
_KEY_LINE = re.compile(r"^(?P<comment>#\s*)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=")
_HEADER = re.compile(r"^(?:#\s*)?\[\[?(?P<name>[A-Za-z0-9_.]+)\]\]?\s*$")


def _setting_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key the loader knows (a list of tables contributes its items' keys)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint) and hint is not HostPort:
            keys |= _setting_keys(typing.cast(type, hint), key + ".")
        elif typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            keys.add(key)
            keys |= _setting_keys(typing.cast(type, args[0]), key + ".")
        else:
            keys.add(key)
    return keys


def _documented_keys(text: str) -> set[str]:
    """Keys written in the example, live or in a commented example block, by section."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if m := _HEADER.match(line):
            section = m["name"]
            keys.add(section)
        elif (m := _KEY_LINE.match(line)) and section:
            keys.add(f"{section}.{m['key']}")
    return keys


def test_every_setting_is_in_the_example() -> None:
    documented = _documented_keys(EXAMPLE.read_text())
    secrets = {f"{section}.{name}" for section, name in settings_mod.SECRET_ENV}
    missing = _setting_keys(Settings) - documented - secrets
    assert not missing, f"keys missing from {EXAMPLE.name}: {sorted(missing)}"


def test_secrets_are_documented_by_their_variable() -> None:
    text = EXAMPLE.read_text()
    for (section, name), var in settings_mod.SECRET_ENV.items():
        assert re.search(rf"^# {name}: from the environment variable {var}", text, re.M), (section, name)


def test_the_example_holds_no_unknown_key_and_its_values_are_the_defaults() -> None:
    # The loader refuses unknown keys, so loading proves there are none.
    assert load(EXAMPLE, env={}) == Settings()


def test_every_key_has_a_comment() -> None:
    paragraph_has_comment = False
    uncommented = []
    for line in EXAMPLE.read_text().splitlines():
        if not line.strip():
            paragraph_has_comment = False
        elif line.lstrip().startswith("#"):
            paragraph_has_comment = True
        elif _KEY_LINE.match(line) and not paragraph_has_comment:
            uncommented.append(line)
    assert not uncommented


def test_the_check_catches_a_missing_key() -> None:
    text = EXAMPLE.read_text().replace("max_recipients = 20\n", "")
    assert "smtp.max_recipients" in _setting_keys(Settings) - _documented_keys(text)
    assert tomllib.loads(text)["smtp"].get("max_recipients") is None


def _user_table(password_hash: str) -> str:
    return f'[[smtp.users]]\nname = "scanner"\npassword_hash = "{password_hash}"\nsenders = ["*@example.com"]\n'


def test_a_user_can_be_added_to_the_example_either_way(tmp_path: Path) -> None:
    from gateway.passwords import hash_password

    hashed = hash_password("copier secret")
    text = EXAMPLE.read_text()
    # Appended at the end, as the comment says...
    appended = tmp_path / "appended.toml"
    appended.write_text(text + "\n" + _user_table(hashed))
    # ... or the commented sample uncommented where it stands.
    start = text.index("# [[smtp.users]]")
    block_end = text.index("\n\n", start)
    sample = "\n".join(line[2:] for line in text[start:block_end].splitlines())
    sample = sample.replace('password_hash = "scrypt$..."', f'password_hash = "{hashed}"')
    in_place = tmp_path / "in-place.toml"
    in_place.write_text(text[:start] + sample + text[block_end:])
    for path, name in ((appended, "scanner"), (in_place, "scanner-3rd-floor")):
        users = load(path, env={}).smtp.users
        assert [(u.name, u.senders) for u in users] == [(name, ("*@example.com",))], path.name


def test_a_toml_mistake_names_the_line_and_the_fix(tmp_path: Path) -> None:
    from gateway.settings import SettingsError

    path = tmp_path / "broken.toml"
    path.write_text('[smtp]\nusers = []\n\n[[smtp.users]]\nname = "a"\n')
    try:
        load(path, env={})
    except SettingsError as exc:
        message = str(exc)
    else:
        raise AssertionError("a TOML mistake must be refused")
    assert "line 4" in message and "delete the line 'users = ...'" in message and "[[smtp.users]]" in message
