"""Multi-worker task queue: two workers share one consumer group; every task is done exactly once.

Workers FETCH with the same ``group_name`` and ``num_msgs=1`` and ACK when done.  The broker
leases a fetched task to the group, so the other worker never gets the same task, and a task
whose worker dies without ACK comes back after ``ack_wait``.  No task twice, none lost.

Run:  python examples/task_queue.py [nats://127.0.0.1:4222]
"""
import asyncio
import os
import sys

from mq9fast import Mq9Client

TASKS = 30


async def worker(server: str, queue: str, name: str, done: dict) -> None:
    async with Mq9Client(server) as client:
        idle = 0
        while idle < 3:                                  # stop after three empty polls in a row
            msgs = await client.fetch(queue, group_name="workers", deliver="earliest", num_msgs=1, max_wait_ms=200)
            if not msgs:
                idle += 1
                continue
            idle = 0
            task = msgs[0].json()
            await asyncio.sleep(0.005)                   # "work"
            done.setdefault(task["n"], []).append(name)
            await client.ack(queue, "workers", msgs[0].msg_id)


async def main(server: str) -> int:
    async with Mq9Client(server) as producer:
        queue = await producer.mailbox_create(ttl=600)
        for n in range(TASKS):
            await producer.send(queue, {"n": n})
        print(f"queued {TASKS} tasks in {queue}")

    done: dict[int, list[str]] = {}
    await asyncio.gather(worker(server, queue, "worker-a", done), worker(server, queue, "worker-b", done))

    twice = {n: w for n, w in done.items() if len(w) > 1}
    lost = sorted(set(range(TASKS)) - set(done))
    per_worker = {w: sum(1 for ws in done.values() for x in ws if x == w) for w in ("worker-a", "worker-b")}
    print(f"done {len(done)} tasks: {per_worker}; duplicates {len(twice)}, lost {len(lost)}")
    ok = not twice and not lost
    print("OK" if ok else f"FAILED: duplicates {twice} lost {lost}")
    return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MQ9FAST_SERVER", "nats://127.0.0.1:4222")
    sys.exit(asyncio.run(main(url)))
