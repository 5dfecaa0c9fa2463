SELECT count(*), sum(v) FROM kv;
