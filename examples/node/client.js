// A jobsup client in Node.js, written from docs/protocol.md: submit a job, wait for
// it, print its result, then show the error a daemon sends for an unknown job type.
// Usage: node client.js [ENDPOINT]   (default $JOBSUP_ENDPOINT, else tcp://127.0.0.1:7700)
"use strict"
const zmq = require("zeromq")
const { encode, decode } = require("@msgpack/msgpack")

class JobsupError extends Error {  // the reply's error: code, message, details
  constructor({ code, message, details }) { super(message); this.code = code; this.details = details }
}

class Client {
  constructor(endpoint, timeoutMs = 10000) {
    this.sock = new zmq.Dealer({ linger: 0 })  // DEALER: one frame out, one frame back
    this.sock.connect(endpoint)
    this.endpoint = endpoint
    this.timeoutMs = timeoutMs
    this.rid = 0
    this.pending = new Map()  // rid -> promise: replies (to waits) can come out of order
    this.read()
  }
  async read() {
    for await (const [frame] of this.sock) {
      const reply = decode(frame)
      const call = this.pending.get(reply.rid)
      if (call === undefined) continue  // the late reply to a call that timed out
      this.pending.delete(reply.rid)
      clearTimeout(call.timer)
      reply.ok ? call.resolve(reply.result) : call.reject(new JobsupError(reply.error))
    }
  }
  call(op, fields = {}, timeoutMs = this.timeoutMs) {
    const rid = ++this.rid
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.pending.delete(rid) && reject(new Error(
        `no reply to '${op}' from ${this.endpoint} in ${timeoutMs} ms; is the daemon running?`)), timeoutMs)
      this.pending.set(rid, { resolve, reject, timer })
      this.sock.send(encode({ v: 1, op, rid, ...fields })).catch(reject)
    })
  }
  close() { this.sock.close() }
}

async function main() {
  const client = new Client(process.argv[2] || process.env.JOBSUP_ENDPOINT || "tcp://127.0.0.1:7700")
  try {
    const { id } = await client.call("submit", { type: "add", payload: { a: 2, b: 3 } })
    console.log(`submitted job ${id}`)
    const [job] = await client.call("wait", { ids: [id], timeout: 30 }, 40000)
    console.log(`job ${id} ${job.status}: result ${JSON.stringify(job.result)}`)
    try {
      await client.call("submit", { type: "no_such_type", payload: {} })
    } catch (err) {
      if (!(err instanceof JobsupError)) throw err
      console.log(`refused: ${err.code}: ${err.message}`)
    }
  } finally {
    client.close()
  }
}

main().catch((err) => { console.error(`error: ${err.code ? `${err.code}: ` : ""}${err.message}`); process.exit(1) })
