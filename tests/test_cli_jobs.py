"""The job commands against a store with a job in every state: tables, --json, and each action's rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ops import cli
from gateway.ops.jobs import UsageError, job_table, parse_since
from gateway.spool import Spool
from gateway.store import State, Store
from tests.support_ops import add_job, fill_store

Filled = tuple[Path, dict[State, str]]


@pytest.fixture
def spool(tmp_path: Path) -> Filled:
    jobs = fill_store(tmp_path / "spool")
    return tmp_path / "spool", jobs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def state_of(spool_dir: Path, job_id: str) -> str:
    store = Store(Spool(spool_dir).db_path)
    try:
        job = store.get_job(job_id)
        assert job is not None
        return job.state
    finally:
        store.close()


def test_jobs_json_lists_every_state(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, jobs = spool
    code, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json")
    listed = json.loads(out)
    assert code == 0
    assert {j["id"]: j["state"] for j in listed} == {v: str(k) for k, v in jobs.items()}
    assert all("ar_token" not in j for j in listed)


def test_jobs_filters(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, jobs = spool
    _, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--state", "held,failed")
    assert sorted(j["id"] for j in json.loads(out)) == sorted([jobs[State.HELD], jobs[State.FAILED]])
    _, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--sender", "ambiguous@")
    assert [j["id"] for j in json.loads(out)] == [jobs[State.AMBIGUOUS]]
    _, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--number", "+3314567")
    assert len(json.loads(out)) == len(State)
    _, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--number", "0999")
    assert json.loads(out) == []
    _, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--since", "1h")
    assert len(json.loads(out)) == len(State)
    _, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--since", "2999-01-01")
    assert json.loads(out) == []


def test_jobs_table_fits_the_terminal(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, jobs = spool
    code, out, _ = run(capsys, "jobs", "--spool", str(spool_dir))
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["JOB", "STATE", "NUMBER"]
    assert jobs[State.QUARANTINED] in out and "in the store:" in out
    store = Store(Spool(spool_dir).db_path)
    try:
        for width in (80, 120, 200):
            table = job_table(store.list_jobs(), width)
            assert all(len(line) <= width for line in table.splitlines()), table
            assert ("SENDER" in table) == (width >= 120)
    finally:
        store.close()


def test_unknown_state_and_bad_since_are_usage_errors(
    capsys: pytest.CaptureFixture[str], spool: Filled
) -> None:
    spool_dir, _ = spool
    code, _, err = run(capsys, "jobs", "--spool", str(spool_dir), "--state", "lost")
    assert code == 1 and "unknown state 'lost'" in err
    code, _, err = run(capsys, "jobs", "--spool", str(spool_dir), "--since", "yesterday")
    assert code == 2 and "--since" in err
    with pytest.raises(UsageError):
        parse_since("soon", 0.0)
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200


def test_missing_store_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "jobs", "--spool", str(tmp_path / "nowhere"))
    assert code == 2 and "no job store" in err
    assert not (tmp_path / "nowhere").exists()


def test_config_finds_the_spool(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, jobs = spool
    config = spool_dir.parent / "gw.toml"
    config.write_text(f'[spool]\ndirectory = "{spool_dir}"\n')
    code, out, _ = run(capsys, "jobs", "--config", str(config), "--json")
    assert code == 0 and len(json.loads(out)) == len(jobs)


def test_show_tells_the_whole_story(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, jobs = spool
    job = jobs[State.DELIVERED]
    code, out, _ = run(capsys, "show", "--spool", str(spool_dir), job)
    assert code == 0
    for expected in (
        f"Job {job}: delivered", "+33145678900", "Invoice 42", "invoice.pdf", "Timeline", "accepted",
        "250 2.0.0 OK: queued as", "code 0 via callback, 2 pages", "delivered    to delivered@example.com",
        "upload        not uploaded yet",
    ):  # fmt: skip
        assert expected in out, expected
    code, out, _ = run(capsys, "show", "--spool", str(spool_dir), "--json", job)
    info = json.loads(out)
    assert info["job"]["state"] == "delivered" and "ar_token" not in info["job"]
    assert [e["kind"] for e in info["timeline"]][:2] == ["accepted", "delivered"]
    assert info["receipts"][0]["etat_e"] == "0"
    assert info["notifications"][0]["kind"] == "delivered"
    assert info["message"]["documents"][0]["name"] == "invoice.pdf"
    code, _, err = run(capsys, "show", "--spool", str(spool_dir), "0000000000000000")
    assert code == 1 and "no job" in err


RETRY_OK = {State.FAILED, State.HELD, State.DEFERRED, State.QUARANTINED}
CANCEL_OK = {State.QUEUED, State.DEFERRED, State.HELD, State.QUARANTINED, State.AMBIGUOUS}


@pytest.mark.parametrize("state", list(State))
def test_retry_in_every_state(capsys: pytest.CaptureFixture[str], spool: Filled, state: State) -> None:
    spool_dir, jobs = spool
    code, out, err = run(capsys, "retry", "--spool", str(spool_dir), "--json", jobs[state])
    if state in RETRY_OK:
        assert code == 0 and json.loads(out)["state"] == "queued"
        assert state_of(spool_dir, jobs[state]) == "queued"
    else:
        assert code == 1 and f"cannot retry job {jobs[state]} ({state})" in err
        assert state_of(spool_dir, jobs[state]) == state


@pytest.mark.parametrize("state", list(State))
def test_cancel_in_every_state(capsys: pytest.CaptureFixture[str], spool: Filled, state: State) -> None:
    spool_dir, jobs = spool
    code, out, err = run(capsys, "cancel", "--spool", str(spool_dir), jobs[state])
    if state in CANCEL_OK:
        assert code == 0 and "is now cancelled" in out
        assert state_of(spool_dir, jobs[state]) == "cancelled"
        _, shown, _ = run(capsys, "show", "--spool", str(spool_dir), "--json", jobs[state])
        info = json.loads(shown)
        assert [e["kind"] for e in info["timeline"]][-2:] == ["operator: cancel", "notice queued: failed"]
        assert [n["kind"] for n in info["notifications"]] == ["failed"]
    else:
        assert code == 1 and "cannot cancel" in err
        assert state_of(spool_dir, jobs[state]) == state


def test_release_all_held_and_only_held(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, jobs = spool
    store = Store(Spool(spool_dir).db_path)
    second = add_job(store, State.HELD)
    store.close()
    code, _, err = run(capsys, "release", "--spool", str(spool_dir), jobs[State.FAILED])
    assert code == 1 and "only held jobs" in err
    code, out, _ = run(capsys, "release", "--spool", str(spool_dir), "--json")
    assert code == 0 and sorted(j["id"] for j in json.loads(out)) == sorted([jobs[State.HELD], second])
    assert state_of(spool_dir, second) == "queued" and state_of(spool_dir, jobs[State.DEFERRED]) == "deferred"
    code, out, _ = run(capsys, "release", "--spool", str(spool_dir))
    assert code == 0 and "released 0 held job(s)" in out


@pytest.mark.parametrize(("flag", "final"), [("--sent", "delivered"), ("--not-sent", "queued")])
def test_resolve(capsys: pytest.CaptureFixture[str], spool: Filled, flag: str, final: str) -> None:
    spool_dir, jobs = spool
    code, out, _ = run(capsys, "resolve", "--spool", str(spool_dir), "--json", flag, jobs[State.AMBIGUOUS])
    assert code == 0 and json.loads(out)["state"] == final
    _, shown, _ = run(capsys, "show", "--spool", str(spool_dir), "--json", jobs[State.AMBIGUOUS])
    kinds = [e["kind"] for e in json.loads(shown)["timeline"]]
    assert f"operator: resolve {flag}" in kinds[-2:]
    assert ("notice queued: delivered" in kinds) == (flag == "--sent")
    for state in State:
        if state != State.AMBIGUOUS:
            code, _, err = run(capsys, "resolve", "--spool", str(spool_dir), flag, jobs[state])
            assert code == 1 and "only ambiguous jobs" in err
    with pytest.raises(SystemExit):
        cli.main(["resolve", "--spool", str(spool_dir), jobs[State.AMBIGUOUS]])  # --sent or --not-sent is required


def test_console_entry_point(spool: Filled) -> None:
    spool_dir, jobs = spool
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "jobs", "--spool", str(spool_dir), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == len(jobs)


@pytest.mark.parametrize("typed", ["0145678903", "01 45 67 89 03", "01.45.67.89.03", "+33145678903", "0033145678903"])
def test_jobs_finds_a_number_in_any_spelling_rcpt_takes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, typed: str
) -> None:
    spool_dir = tmp_path / "spool"
    Spool(spool_dir).create()
    store = Store(Spool(spool_dir).db_path)
    try:
        wanted = add_job(store, State.QUEUED, number="+33145678903")
        add_job(store, State.QUEUED, number="+33145678900")
    finally:
        store.close()
    code, out, _ = run(capsys, "jobs", "--spool", str(spool_dir), "--json", "--number", typed)
    assert code == 0 and [j["id"] for j in json.loads(out)] == [wanted]


def test_bare_jobs_finds_the_demo_spool_here(
    capsys: pytest.CaptureFixture[str], spool: Filled, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir, jobs = spool
    here = spool_dir.parent / "where-the-demo-ran"
    (here / "fax-gateway-demo").mkdir(parents=True)
    spool_dir.rename(here / "fax-gateway-demo" / "spool")
    monkeypatch.chdir(here)
    monkeypatch.setattr("gateway.ops.jobs.DEFAULT_CONFIG", str(here / "no-such-file.toml"))
    code, out, _ = run(capsys, "jobs", "--json")
    assert code == 0 and len(json.loads(out)) == len(jobs)


def test_with_json_an_error_is_json_too(capsys: pytest.CaptureFixture[str], spool: Filled) -> None:
    spool_dir, _ = spool
    code, out, err = run(capsys, "show", "--spool", str(spool_dir), "--json", "0000000000000000")
    assert code == 1 and err == "fax-gateway: no job '0000000000000000'\n"  # for the person at the terminal
    assert json.loads(out) == {"error": "no job '0000000000000000'", "exit_status": 1}  # for the script
    code, out, _ = run(capsys, "retry", "--spool", str(spool_dir / "nowhere"), "--json", "0000000000000000")
    assert code == 2 and json.loads(out)["exit_status"] == 2 and "no job store" in json.loads(out)["error"]


def test_the_exit_statuses_are_one_table_in_help_and_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\d)` \| (.+?) \|$", readme.split("### Exit statuses", 1)[1], re.M))
    assert {int(k): v for k, v in rows.items()} == cli.EXIT_STATUSES
    parser = cli.build_parser()
    assert cli.EXIT_HELP == parser.epilog
    for command in ("jobs", "show", "send", "check-config", "serve"):
        done = subprocess.run([sys.executable, "-m", "gateway", command, "--help"], capture_output=True, text=True)
        assert " ".join(cli.EXIT_HELP.split()) in " ".join(done.stdout.split()), command


def test_show_decodes_the_headers_it_quotes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from gateway.store import NewMessage, new_id

    spool_dir = tmp_path / "spool"
    Spool(spool_dir).create()
    store = Store(Spool(spool_dir).db_path)
    try:
        msg = NewMessage(
            id=new_id(), envelope_from="celine@example.com", header_from="=?utf-8?q?C=C3=A9line?= <celine@example.com>",
            reply_to="=?iso-8859-1?q?Secr=E9tariat?= <sec@example.com>", message_id_header="<1@example.com>",
            subject="=?utf-8?b?RmFjdHVyZSBuwrA1?=", date_header="", client_addr="127.0.0.1", auth_user="",
            doc_type="pdf", doc_pages=1, doc_bytes=10,
        )  # fmt: skip
        job_id = new_id()
        store.add_message(msg, [(job_id, "+33145678903", "")], "accepted")
    finally:
        store.close()
    code, out, _ = run(capsys, "show", "--spool", str(spool_dir), job_id)
    assert code == 0
    assert "Céline <celine@example.com>" in out and "Secrétariat <sec@example.com>" in out and "Facture n°5" in out
