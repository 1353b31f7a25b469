"""`carbonwatch ledger` flags: bad input is named with exit 2, an unreachable ledger or database exit 4."""

from __future__ import annotations

import pytest

from carbonwatch import cli
from tests.support import free_port


@pytest.mark.parametrize(("args", "code", "says"), [
    (["serve", "--prometheus", "http://127.0.0.1:1", "--database", "mysql://h/d"], 2, "'mysql' is not supported"),
    (["serve", "--prometheus", "http://127.0.0.1:1", "--database", "sqlite://"], 2, "names no file"),
    (["serve", "--prometheus", "ftp://x", "--database", "sqlite:///{tmp}/l.db"], 2, "not an http(s) URL"),
    (["serve", "--prometheus", "http://x", "--database", "sqlite:///{tmp}/l.db", "--sync.interval", "5q"], 2,
     "--sync.interval: '5q' is not a duration"),
    (["serve", "--prometheus", "http://x", "--database", "sqlite:///{tmp}/l.db", "--sync.start", "soon"], 2,
     "--sync.start: 'soon' is not a date"),
    (["serve", "--prometheus", "http://x", "--database", "sqlite:///{tmp}/l.db", "--web.listen-address", "x"], 2,
     "is not HOST:PORT"),
    (["serve", "--prometheus", "http://x", "--database", "postgresql://u:secret@127.0.0.1:{port}/d"], 4,
     "cannot open postgresql+psycopg://u:***@127.0.0.1"),
    (["export", "--ledger", "http://127.0.0.1:{port}", "--group-by", "user"], 4, "cannot reach the ledger"),
    (["export", "--ledger", "http://127.0.0.1:{port}", "--group-by", "user", "--to", "May"], 2, "--to: 'May'"),
])
def test_errors_name_what_is_wrong(tmp_path, capsys, args, code, says):
    port = free_port()
    argv = ["ledger"] + [a.format(tmp=tmp_path, port=port) for a in args]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert says in err and "secret" not in err and "Traceback" not in err


def test_serve_uses_the_exporters_web_config(tmp_path):
    """--web.config.file as the exporter's: basic auth guards /metrics and the API alike."""
    import bcrypt
    import requests

    from carbonwatch.ledger.service import Ledger, ServeConfig

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    ledger = Ledger(ServeConfig(prometheus=f"http://127.0.0.1:{free_port()}", database=f"sqlite:///{tmp_path}/l.db",
                                listen="127.0.0.1:0", web_config_file=str(tmp_path / "web.yml")))
    try:
        url = ledger.server.url
        assert requests.get(url + "/api/v1/runs", timeout=5).status_code == 401
        assert requests.get(url + "/metrics", timeout=5).status_code == 401
        ok = requests.get(url + "/api/v1/runs", auth=("prom", "pw"), timeout=5)
        assert ok.status_code == 200 and ok.json() == {"runs": [], "total": 0, "next_offset": None}
        assert ledger.syncer.sync() is False  # Prometheus unreachable: counted, not raised
        assert ledger.syncer.health.errors == 1 and "cannot reach" in ledger.syncer.health.last_error
        assert requests.get(url + "/-/ready", auth=("prom", "pw"), timeout=5).status_code == 200
    finally:
        ledger.close()
