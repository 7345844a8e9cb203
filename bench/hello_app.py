"""Bare Flask hello: the ceiling any Flask route on this machine can reach.

`gunicorn -c bench/gunicorn_bare.conf.py -w 2 -b 127.0.0.1:PORT bench.hello_app:app`
"""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/hello")
def hello():
    return jsonify({"message": "hello"})
