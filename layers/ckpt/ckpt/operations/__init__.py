"""Operations: what an operator runs to see, repair and trust the pipeline (sweep, backfill, redrive, status)."""
