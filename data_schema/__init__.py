"""What the data is: table schemas, the corpus store and its DuckDB views."""

from songmill.data_schema.store import Corpus, CorpusError, default_corpus_root, new_run_id, utcnow
from songmill.data_schema.tables import (
    SCHEMA_VERSION,
    TABLES,
    TableSpec,
    register_table,
    table_spec,
)
from songmill.data_schema.views import register_manifest_join

# Tables of later stages live in their own modules; importing them registers them.
from songmill.data_schema import features, vocals  # noqa: E402,F401  isort: skip
from songmill.data_schema import labels  # noqa: E402,F401  isort: skip
from songmill.data_schema import fingerprints  # noqa: E402,F401  isort: skip

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "Corpus",
    "CorpusError",
    "TableSpec",
    "default_corpus_root",
    "new_run_id",
    "register_manifest_join",
    "register_table",
    "table_spec",
    "utcnow",
]
