"""Registrant subprocess for the failure benchmark: registers one host (ttl 2 s) with
rx-discovery (``ours``) or with a raw lease + refresh loop (``raw``), prints its uuid once
registered, then holds it until killed (at most 120 s)."""

from __future__ import annotations

import sys
import time

from bench.common import host_key, make_host


def main() -> None:
    kind, endpoint, service, ttl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    deadline = time.monotonic() + 120
    if kind == "ours":
        from rx_discovery import Discovery

        d = Discovery(endpoints=[endpoint])
        registration = d.register(service, make_host(service, 0), ttl=ttl).wait(30)
        print(registration.uuid, flush=True)
        while time.monotonic() < deadline:
            time.sleep(1)
        d.close()
    else:
        import etcd3

        host, _, port = endpoint.rpartition("//")[2].partition(":")
        client = etcd3.client(host, int(port))
        hostobj = make_host(service, 0)
        lease = client.lease(ttl)
        client.put(host_key(service, hostobj.uuid), hostobj.to_json(), lease=lease)
        print(hostobj.uuid, flush=True)
        while time.monotonic() < deadline:
            time.sleep(ttl / 3)
            for _ in client.refresh_lease(lease.id):
                pass


if __name__ == "__main__":
    main()
