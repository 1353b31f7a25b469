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
