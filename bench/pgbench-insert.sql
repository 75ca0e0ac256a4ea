INSERT INTO bench_pg_ceiling (payload) VALUES ('x');
