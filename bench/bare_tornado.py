"""A bare Tornado JSON echo server: the reference the HTTP benchmark compares against.

    python -m bench.bare_tornado PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import tornado.web


class Echo(tornado.web.RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": json.loads(self.request.body)["text"]}))


async def main(port: int) -> None:
    tornado.web.Application([(r"/api/", Echo)], log_function=lambda handler: None).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
