"""Settings validation: every error names the key that holds the problem; secrets print masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import settings as settings_mod
from gateway.settings import Secret, Settings, SettingsError, describe, from_mapping, load


def _error(table: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        from_mapping(table, env or {})
    return str(info.value)


def test_embedded_defaults_are_valid() -> None:
    assert load(None, env={}) == Settings()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"smtp": {"listen": "abc"}}, "smtp.listen"),
        ({"smtp": {"listen": "127.0.0.1:99999"}}, "smtp.listen"),
        ({"smtp": {"max_recipients": "20"}}, "smtp.max_recipients"),
        ({"smtp": {"max_recipients": 0}}, "smtp.max_recipients"),
        ({"smtp": {"fax_domains": []}}, "smtp.fax_domains"),
        ({"smtp": {"fax_domains": ["bad domain"]}}, "smtp.fax_domains[0]"),
        ({"smtp": {"trusted_networks": [{"cidr": "10.0.0.0/33"}]}}, "smtp.trusted_networks[0].cidr"),
        (
            {"smtp": {"trusted_networks": [{"cidr": "10.0.0.0/8", "senders": ["nobody"]}]}},
            "smtp.trusted_networks[0].senders[0]",
        ),
        ({"smtp": {"users": [{"name": "a", "password_hash": "plain"}]}}, "smtp.users[0].password_hash"),
        ({"smtp": {"users": [{"name": "a"}]}}, "smtp.users[0].password_hash"),
        ({"smtp": {"tls_cert": "/nonexistent/cert.pem"}}, "smtp.tls_cert"),
        ({"smtp": {"colour": "blue"}}, "smtp.colour"),
        ({"mystery": {}}, "mystery"),
        ({"numbers": {"default_region": "XX"}}, "numbers.default_region"),
        ({"numbers": {"wire_format": "international"}}, "numbers.wire_format"),
        ({"documents": {"accepted_types": ["docx"]}}, "documents.accepted_types[0]"),
        ({"documents": {"processes": -1}}, "documents.processes"),
        ({"documents": {"processes": 65}}, "documents.processes"),
        ({"storage": {"presign_seconds": 8 * 86400}}, "storage.presign_seconds"),
        ({"storage": {"backend": "s3"}}, "storage.bucket"),
        ({"provider": {"url": "ftp://example"}}, "provider.url"),
        ({"provider": {"email": "not-an-address"}}, "provider.email"),
        ({"provider": {"password": "hunter2"}}, "provider.password"),
        ({"provider": {"accuse_email": "address"}}, "provider.accuse_email_address"),
        ({"http": {"callback_networks": ["nowhere"]}}, "http.callback_networks[0]"),
        ({"http": {"status_networks": ["10.0.0.0/8", "nowhere"]}}, "http.status_networks[1]"),
        ({"notify": {"from_address": ""}}, "notify.from_address"),
        ({"notify": {"recipient_order": ["cc"]}}, "notify.recipient_order[0]"),
        ({"notify": {"sender_map": {"scanner@example.com": "nobody"}}}, "notify.sender_map.scanner@example.com"),
        ({"delivery": {"min_backoff_seconds": 7200.0, "max_backoff_seconds": 60.0}}, "delivery.min_backoff_seconds"),
        ({"delivery": {"poll_seconds": True}}, "delivery.poll_seconds"),
        ({"log": {"format": "xml"}}, "log.format"),
        ({"log": "debug"}, "log"),
    ],
)
def test_each_error_names_its_key(table: dict[str, Any], key: str) -> None:
    message = _error(table)
    assert message.startswith(f"{key}:"), message


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[smtp\nlisten = 1\n")
    with pytest.raises(SettingsError, match="broken.toml: not valid TOML"):
        load(broken, env={})
    with pytest.raises(SettingsError, match="missing.toml: cannot read"):
        load(tmp_path / "missing.toml", env={})


def test_secrets_come_from_the_environment_and_print_masked() -> None:
    env = {var: f"canary-{section}-{name}" for (section, name), var in settings_mod.SECRET_ENV.items()}
    s = from_mapping({}, env)
    assert s.provider.password.reveal() == "canary-provider-password"
    assert s.http.callback_secret.reveal() == "canary-http-callback_secret"
    for text in (repr(s), str(s), str(describe(s)), repr(s.provider), f"{s.notify.relay_password}"):
        assert "canary" not in text
    assert describe(s)["provider"]["password"] == "********"
    assert describe(Settings())["provider"]["password"] == ""


def test_describe_is_plain_data() -> None:
    data = describe(from_mapping({"notify": {"sender_map": {"scan@example.com": "team@example.com"}}}, {}))
    assert data["smtp"]["listen"] == "127.0.0.1:2525"
    assert data["smtp"]["trusted_networks"][0] == {"cidr": "127.0.0.0/8", "senders": [], "plaintext_auth": False,
                                                    "refusals": "smtp"}
    assert data["notify"]["sender_map"] == {"scan@example.com": "team@example.com"}


def test_ipv6_listen_address() -> None:
    s = from_mapping({"smtp": {"listen": "[::1]:2525"}}, {})
    assert (s.smtp.listen.host, s.smtp.listen.port, str(s.smtp.listen)) == ("::1", 2525, "[::1]:2525")
    assert _error({"smtp": {"listen": "[zz::1]:25"}}).startswith("smtp.listen:")


def test_secret_equality_and_truth() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and Secret("x")


_PG_DSN = {"FAX_GATEWAY_STORE_DSN": "host=db.example.com dbname=fax user=fax password=canary-pg"}
_S3 = {"backend": "s3", "bucket": "faxes"}


def test_the_store_is_sqlite_unless_postgresql_is_asked_for_with_a_dsn_from_the_environment() -> None:
    assert Settings().store.backend == "sqlite" and not Settings().store.dsn
    s = from_mapping({"store": {"backend": "postgresql"}, "storage": _S3}, _PG_DSN)
    assert s.store.backend == "postgresql" and s.store.dsn.reveal() == _PG_DSN["FAX_GATEWAY_STORE_DSN"]
    assert "canary" not in repr(s) and describe(s)["store"]["dsn"] == "********"
    assert _error({"store": {"backend": "mysql"}}).startswith("store.backend:")
    assert _error({"store": {"dsn": "host=db"}}).startswith("store.dsn: secrets are not read from the file")
    with pytest.raises(SettingsError, match=r"^store.dsn: .*needs FAX_GATEWAY_STORE_DSN"):
        from_mapping({"store": {"backend": "postgresql"}, "storage": _S3}, {})


def test_a_malformed_dsn_is_refused_without_quoting_it() -> None:
    env = {"FAX_GATEWAY_STORE_DSN": "host=db password=canary-pg dbname"}
    with pytest.raises(SettingsError, match=r"^store.dsn: FAX_GATEWAY_STORE_DSN is not a PostgreSQL") as caught:
        from_mapping({"store": {"backend": "postgresql"}, "storage": _S3}, env)
    assert "canary" not in str(caught.value)


def test_postgresql_needs_s3_and_the_refusal_names_both_settings() -> None:
    with pytest.raises(SettingsError, match=r"^store.backend: 'postgresql' needs storage.backend = 's3'"):
        from_mapping({"store": {"backend": "postgresql"}}, _PG_DSN)


def test_the_dsn_is_a_secret_the_log_filters_mask() -> None:
    from gateway.redact import MASK, redact, secrets_of

    s = from_mapping({"store": {"backend": "postgresql"}, "storage": _S3}, _PG_DSN)
    assert _PG_DSN["FAX_GATEWAY_STORE_DSN"] in secrets_of(s)
    assert redact(f"cannot connect: {_PG_DSN['FAX_GATEWAY_STORE_DSN']}", secrets_of(s)) == f"cannot connect: {MASK}"
