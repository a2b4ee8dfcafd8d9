"""Sub-agent result delivery: the parent hands a private, short-lived reply mailbox to a sub-agent.

The parent creates a reply mailbox with a TTL (it disappears on its own, with everything in it)
and passes its address as ``reply_to`` in the task.  The sub-agent does the work and sends the
result there; the parent collects it whenever it likes - neither side has to be online at the
same time as the other.

Run:  python examples/subagent_result.py [nats://127.0.0.1:4222]
"""
import asyncio
import os
import sys

from mq9fast import Mq9Client, Priority


async def sub_agent(server: str, inbox: str) -> None:
    async with Mq9Client(server) as client:
        tasks = await client.fetch(inbox, group_name="subagent", deliver="earliest", max_wait_ms=5000)
        for task in tasks:
            job = task.json()
            result = {"task_id": job["task_id"], "result": sum(job["numbers"])}
            await client.send(job["reply_to"], result, priority=Priority.URGENT)
            await client.ack(inbox, "subagent", task.msg_id)
            print(f"sub-agent: finished {job['task_id']}, result sent to the parent's reply mailbox")


async def main(server: str) -> int:
    async with Mq9Client(server) as parent:
        sub_inbox = await parent.mailbox_create(ttl=600)           # the sub-agent's task inbox
        reply_box = await parent.mailbox_create(ttl=300)           # private: only the parent and the sub-agent know it
        await parent.send(sub_inbox, {"task_id": "t-1", "numbers": [1, 2, 3, 4], "reply_to": reply_box},
                          headers={"mq9-reply-to": reply_box})
        print(f"parent: task sent; reply mailbox {reply_box} (ttl 300 s)")

        await sub_agent(server, sub_inbox)

        results = await parent.fetch(reply_box, deliver="earliest", max_wait_ms=5000)
        for r in results:
            print(f"parent: got {r.json()} ({r.priority.value})")
        ok = len(results) == 1 and results[0].json() == {"task_id": "t-1", "result": 10}
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MQ9FAST_SERVER", "nats://127.0.0.1:4222")
    sys.exit(asyncio.run(main(url)))
