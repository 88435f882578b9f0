from vhuman.io import logging_to
from vhuman.shards import gather_shards


def as_list(item):
    return [item] if isinstance(item, str) else list(item)


# Joins a sharded stage's outputs: directories by name (images, masks, ...), tables concatenated in shard order.
with logging_to(snakemake.log[0]):
    out, inp = snakemake.output, snakemake.input
    dirs = [k for k in ("images", "masks") if k in out.keys() and as_list(out[k])]
    tables = [k for k in ("latents", "truth") if k in out.keys() and as_list(out[k])]
    shards = len(as_list(inp[dirs[0]]))
    gather_shards(
        [[as_list(inp[k])[s] for k in dirs] for s in range(shards)],
        [as_list(out[k])[0] for k in dirs],
        [(as_list(inp[k]), as_list(out[k])[0]) for k in tables],
    )
    print(f"joined {shards} shards into {', '.join(as_list(out[k])[0] for k in dirs + tables)}", flush=True)
