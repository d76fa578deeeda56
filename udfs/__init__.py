"""Pure-Python logic of nudge: codecs, validation and trigger rules, testable without a JVM."""
