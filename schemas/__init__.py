"""The Avro schemas of the contract (``*.avsc``) and the local schema-id map
(``registry.json``). A package so that the jobs find them wherever the code is shipped
(``flink run -pyfs``, a container image, a checkout)."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
