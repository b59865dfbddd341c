// One live run's EventSource. The browser reconnects a dropped stream by itself
// (sending Last-Event-ID); a stream closed for good (204, an HTTP error) is
// handed back to the view after a pause (`onClosed`), which checks the run and
// reopens it after the last sequence it holds.

const RECONNECT_MS = 2000; // wait before reopening a stream that closed for good

export class LiveStream {
  /**
   * url(afterSequence); onEvent(event); onConnection(text, kind); onClosed() after a
   * close for good; ended() says whether the run is over (no reconnect then).
   */
  constructor({ url, lastSequence, onEvent, onConnection, onClosed, ended }) {
    Object.assign(this, { url, lastSequence, onEvent, onConnection, onClosed, ended });
    this.es = null;
    this.opens = 0;
    this.stopped = false;
  }

  get isOpen() {
    return Boolean(this.es);
  }

  open() {
    if (this.stopped || this.es) return;
    const es = new EventSource(this.url(this.lastSequence()));
    this.es = es;
    this.opens += 1;
    this.onConnection("connecting…", "wait");
    es.onopen = () => this.onConnection("live", "live");
    es.addEventListener("ade.event", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.onEvent(event);
    });
    es.onerror = () => {
      if (this.es !== es) return;
      if (es.readyState === EventSource.CONNECTING) {
        this.onConnection("reconnecting…", "wait"); // the browser retries, sending Last-Event-ID
        return;
      }
      es.close();
      this.es = null;
      if (this.ended()) return;
      this.onConnection("reconnecting…", "wait");
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.onClosed(), RECONNECT_MS);
    };
  }

  close() {
    clearTimeout(this.timer);
    if (this.es) {
      this.es.close();
      this.es = null;
    }
  }

  stop() {
    this.stopped = true;
    this.close();
  }
}
