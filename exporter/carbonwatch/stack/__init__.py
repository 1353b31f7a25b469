"""Tools around a running stack: the native launcher (`carbonwatch stack`), its config variants, the run report,
`carbonwatch job`, the budgets renderer and the demo. They read the repository's prometheus/, alerting/ and
grafana/ files where they need them (CARBONWATCH_REPO_ROOT, or the checkout they run from)."""
