"""Cloud to edge: commands sent while the edge device is offline are waiting when it reconnects,
the critical ones first.

The cloud sends routine config updates, an urgent firmware notice and a critical "stop motor"
command to the edge device's mailbox while the device is offline.  When the device comes back
it FETCHes once and gets the critical command first, then urgent, then normal (FIFO within each).

Run:  python examples/cloud_edge.py [nats://127.0.0.1:4222]
"""
import asyncio
import os
import sys

from mq9fast import Mq9Client, Priority


async def main(server: str) -> int:
    async with Mq9Client(server) as cloud:
        edge_box = await cloud.mailbox_create(ttl=3600)
        print(f"edge device mailbox: {edge_box} (device offline)")
        await cloud.send(edge_box, {"cmd": "set", "key": "sample_rate", "value": 10})
        await cloud.send(edge_box, {"cmd": "set", "key": "log_level", "value": "info"})
        await cloud.send(edge_box, {"cmd": "firmware", "version": "2.1"}, priority=Priority.URGENT)
        await cloud.send(edge_box, {"cmd": "stop_motor"}, priority=Priority.CRITICAL)
        await cloud.send(edge_box, {"cmd": "set", "key": "upload", "value": "hourly"})
        print("cloud: 5 commands sent while the edge was offline")

    await asyncio.sleep(0.2)  # ... the device is offline ...

    async with Mq9Client(server) as edge:  # the device reconnects
        cmds = await edge.fetch(edge_box, group_name="edge", deliver="earliest", num_msgs=10)
        for m in cmds:
            print(f"edge: {m.priority.value:8} {m.json()}")
        if cmds:
            await edge.ack(edge_box, "edge", cmds[-1].msg_id)   # ACK the last = the whole batch
        again = await edge.fetch(edge_box, group_name="edge", num_msgs=10)

    order = [m.priority.value for m in cmds]
    ok = (order == ["critical", "urgent", "normal", "normal", "normal"]
          and cmds[0].json() == {"cmd": "stop_motor"}
          and [m.json().get("key") for m in cmds[2:]] == ["sample_rate", "log_level", "upload"]
          and again == [])
    print("OK" if ok else f"FAILED: order {order}")
    return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MQ9FAST_SERVER", "nats://127.0.0.1:4222")
    sys.exit(asyncio.run(main(url)))
