-- Consumers forget the ids of events older than kafka.dedupe_retention_hours
-- (longer than the topics' retention); this index finds them without a
-- B-tree entry per recorded event.
CREATE INDEX processed_events_by_age ON processed_events USING brin (processed_at);
