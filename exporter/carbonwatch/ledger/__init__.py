"""The run ledger: a durable record of every run's energy, emissions and cost, fed from the exporters'
counters through the Prometheus HTTP API and served as /metrics, an HTTP API and `carbonwatch ledger export`.

Data flows one way: `source` reads raw samples, `accumulate` turns them into hourly deltas (pure), `store`
writes them with the cursor in one transaction (`schema`, `db`: tables and migrations), `sync` drives the
cycle, `snapshot` computes what /metrics serves after each sync, `api` answers the HTTP API, `cli` is
`carbonwatch ledger serve|export`.
"""
