// Tail a Durable Stream with the official TypeScript client (@durable-streams/client).
//
// usage: node ds_tail.mjs URL OFFSET LIVE [STOP_AFTER]
//   LIVE: sse | long-poll | false (catch-up only)
//   STOP_AFTER: stop after the batch that brings this many events (to save an offset)
// Prints one JSON line: {"sequences": [...], "offset": "...", "streamClosed": bool}
import { stream } from "@durable-streams/client";

const [url, offset, liveArg, stopAfterArg] = process.argv.slice(2);
const live = liveArg === "false" ? false : liveArg;
const stopAfter = stopAfterArg ? Number(stopAfterArg) : Infinity;

const res = await stream({ url, offset, live, json: true });
const sequences = [];
let lastOffset = offset;
let closed = false;
await new Promise((resolve, reject) => {
  const unsubscribe = res.subscribeJson(async (batch) => {
    for (const event of batch.items) sequences.push(event.sequence);
    lastOffset = batch.offset;
    closed = closed || batch.streamClosed;
    if (closed || sequences.length >= stopAfter) {
      unsubscribe();
      res.cancel();
      resolve();
    }
  });
  // `closed` may settle before the subscriber saw the last batch: the batch that
  // says streamClosed resolves first; this is the fallback (errors, cancel)
  res.closed.then(() => setTimeout(resolve, 500), reject);
});
console.log(JSON.stringify({ sequences, offset: lastOffset, streamClosed: closed || res.streamClosed }));
process.exit(0);
