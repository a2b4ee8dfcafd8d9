"""Asynchronous request-reply: ask, keep working, collect the answer later.

Unlike NATS request/reply, the answer does not have to arrive while the asker is waiting: it is
stored in the asker's reply mailbox.  The asker sends its question, does other work, and FETCHes
the answer when it needs it (it would still be there after a restart).

Run:  python examples/async_request_reply.py [nats://127.0.0.1:4222]
"""
import asyncio
import os
import sys

from mq9fast import Mq9Client


async def responder(server: str, inbox: str) -> None:
    async with Mq9Client(server) as client:
        questions = await client.fetch(inbox, group_name="responder", deliver="earliest", max_wait_ms=5000)
        for q in questions:
            await asyncio.sleep(0.3)  # a slow answer
            await client.send(q.reply_to or q.json()["reply_to"], {"answer": q.json()["question"].upper()})
            await client.ack(inbox, "responder", q.msg_id)


async def main(server: str) -> int:
    async with Mq9Client(server) as asker:
        service_inbox = await asker.mailbox_create(ttl=600)
        my_replies = await asker.mailbox_create(ttl=600)
        background = asyncio.create_task(responder(server, service_inbox))

        await asker.send(service_inbox, {"question": "status of order 17?", "reply_to": my_replies},
                         headers={"mq9-reply-to": my_replies})
        print("asker: question sent; doing other work meanwhile")
        for step in range(3):
            await asyncio.sleep(0.2)
            print(f"asker: other work step {step + 1}")

        await background
        answers = await asker.fetch(my_replies, deliver="earliest", max_wait_ms=5000)  # later: collect
        for a in answers:
            print(f"asker: answer {a.json()}")
        ok = len(answers) == 1 and answers[0].json() == {"answer": "STATUS OF ORDER 17?"}
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MQ9FAST_SERVER", "nats://127.0.0.1:4222")
    sys.exit(asyncio.run(main(url)))
