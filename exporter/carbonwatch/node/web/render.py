"""/metrics bodies through prometheus-client's own exposition (`choose_encoder`: the text format, OpenMetrics,
escaping schemes) and the landing page. One render path: the format is chosen from the Accept header only."""

from __future__ import annotations

import gzip
import html
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.registry import Collector


class _Many(Collector):
    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for c in self.collectors:
            yield from c.collect()


def render_metrics(collectors: Iterable[Collector], accept: str | None) -> tuple[bytes, str]:
    """(body, content type) for an `Accept` header, as prometheus-client negotiates it: OpenMetrics when
    asked for, else the text format 0.0.4."""
    encoder, ctype = choose_encoder(accept or "")
    return encoder(_Many(collectors)), ctype


GZIP_LEVEL = 1  # fastest: a scrape's text compresses ~10x already at level 1


class Renderer:
    """`render_metrics` for many concurrent scrapes: scrapes that ask for the same body (format and encoding)
    while one is being rendered share that rendering instead of each making its own, so a burst of scrapes
    costs about one rendering at a time and never starves the sampler of the interpreter."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, bool], Future[bytes]] = {}

    def body(self, accept: str | None, compress: bool) -> tuple[bytes, str]:
        """(body, content type) for an Accept header, gzip-compressed when `compress`."""
        encoder, ctype = choose_encoder(accept or "")
        key = (ctype, compress)
        with self._lock:
            shared = self._in_flight.get(key)
            if shared is None:
                mine: Future[bytes] = Future()
                self._in_flight[key] = mine
        if shared is not None:
            return shared.result(), ctype
        try:
            data = encoder(_Many(self.collectors))
            if compress:
                data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
            mine.set_result(data)
            return data, ctype
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._in_flight[key]


def render_text(collectors: Iterable[Collector]) -> bytes:
    """The Prometheus text format 0.0.4."""
    return render_metrics(collectors, CONTENT_TYPE_PLAIN_0_0_4)[0]


def render_openmetrics(collectors: Iterable[Collector]) -> bytes:
    """OpenMetrics 1.0.0 text."""
    return render_metrics(collectors, OPENMETRICS)[0]


def accepts_gzip(header: str | None) -> bool:
    """Accept-Encoding names gzip (or *) with a q-value above 0 (prometheus-client's own check ignores q=0)."""
    for item in (header or "").split(","):
        coding, *params = (p.strip() for p in item.split(";"))
        if coding.lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


LANDING_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{name}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:50em}}code{{background:#eee;padding:0 .2em}}</style>
</head>
<body>
<h1>{name}</h1>
<p>{description}</p>
<ul>
{links}
</ul>
<p>Version {version}</p>
</body>
</html>
"""


@dataclass(frozen=True)
class Landing:
    name: str = "carbonwatch exporter"
    description: str = "Energy and CO2 of this node's processes and training runs, for Prometheus."
    version: str = ""
    links: tuple[tuple[str, str], ...] = (("/metrics", "Metrics"),)

    def render(self) -> bytes:
        links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>'
                          for href, text in self.links)  # fmt: skip
        return LANDING_TEMPLATE.format(
            name=html.escape(self.name), description=html.escape(self.description), links=links,
            version=html.escape(self.version or "unknown"),
        ).encode("utf-8")


