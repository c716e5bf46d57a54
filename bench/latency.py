"""1. Event latency: put of a new host key -> ``subscribe_new`` emission, vs put -> raw
``add_watch_prefix_callback`` callback (which ``json.loads`` the value, as a user would)."""

from __future__ import annotations

from bench.common import (
    BenchResult,
    Context,
    Stamp,
    host_key,
    host_value,
    now_ns,
    percentile,
    raw_watch,
    stamping_decoder,
    us,
)

NAME = "latency"
TITLE = "1. put -> event latency"


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    samples = ctx.size(1000, 200)
    blocks = 10
    writer = ctx.raw_client()  # one writer for both sides: only the watch side differs
    ours_service, raw_service = "lat-ours", "lat-raw"

    d = ctx.discovery()
    ours_stamp = Stamp()
    subscription = d.subscribe_new(ours_service).subscribe(on_next=lambda _h: ours_stamp.hit())

    raw_stamp = Stamp()
    watch_client = ctx.raw_client()

    cancel = raw_watch(watch_client, f"/services/{raw_service}/", stamping_decoder(raw_stamp))
    counter = iter(range(10**9))

    def sample(service: str, stamp: Stamp, timeout: float = 5.0) -> int | None:
        uuid, value = host_value(service, next(counter))
        key = host_key(service, uuid)
        start = now_ns()
        writer.put(key, value)
        end = stamp.wait(timeout)
        return None if end is None else end - start

    try:
        # The stream opens in the background: put until it delivers, then warm both paths.
        for _ in range(200):
            if sample(ours_service, ours_stamp, 0.05) is not None:
                break
        for _ in range(30):
            sample(ours_service, ours_stamp)
            sample(raw_service, raw_stamp)
        sides = {"ours": (ours_service, ours_stamp), "raw": (raw_service, raw_stamp)}
        delays: dict[str, list[int]] = {"ours": [], "raw": []}
        lost = {"ours": 0, "raw": 0}
        per_block = samples // blocks
        for _ in range(blocks):  # interleaved blocks, so drift hits both sides alike
            for side, (service, stamp) in sides.items():
                for _ in range(per_block):
                    value = sample(service, stamp)
                    if value is None:
                        lost[side] += 1
                    else:
                        delays[side].append(value)
        ours, raw = delays["ours"], delays["raw"]
    finally:
        subscription.dispose()
        cancel()

    for name, q, target in (("p50", 50, 1.15), ("p99", 99, 1.3)):
        result.add(f"{name} put->event", "us", us(percentile(ours, q)), us(percentile(raw, q)),
                   ("ratio<=", target))
    result.add("p90 put->event", "us", us(percentile(ours, 90)), us(percentile(raw, 90)))
    result.notes.append(
        f"{len(ours)}+{len(raw)} sequential samples in {blocks} interleaved blocks; one raw "
        f"writer for both; lost: {lost}. Latency includes the put round trip (the event "
        "usually arrives before put() returns). Raw side: python3-etcd3 callback watch + "
        "json.loads; ours: snapshot+watch sync, decode_host, diff, shared fan-out, "
        "events/filter/map operators.")
    return result
