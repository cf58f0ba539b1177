//! The one dispatcher of control requests: each answered from the loop's
//! own state with its typed answer, its loop time counted.

use protocol::control::{Answer, Events, Pong, Request};

use super::control::ControlRequest;
use super::coordinator::Coordinator;

impl Coordinator {
    /// Answers `req` (the answer goes back to its client's thread, which
    /// writes it) and counts what it cost the loop.
    pub(super) fn control(&mut self, req: ControlRequest) {
        let started = std::time::Instant::now();
        let kind = req.request.kind();
        let answer = match req.request {
            Request::Ping => Answer::Pong(Pong { pong: true }),
            Request::Status => Answer::Status(Box::new(self.status())),
            Request::Metrics => Answer::Metrics(Box::new(self.metrics_snapshot())),
            Request::Events => Answer::Events(Events {
                events: self.faults.all(),
            }),
            Request::Traders => Answer::Traders(self.traders_list()),
            Request::Add(traders) => self.traders_add(traders, req.checked),
            Request::Remove(id) => self.traders_remove(&id),
        };
        self.control_costs.record(kind, started.elapsed());
        let _ = req.reply.send(answer);
    }
}
