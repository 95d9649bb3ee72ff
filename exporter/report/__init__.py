"""`timewait-exporter report`: two polls of the same engine as `serve` and `dump`, turned
into a diagnosis a person can read (text) or a program can check (JSON, see
docs/report.schema.json), with findings that say what is wrong and what to do."""
