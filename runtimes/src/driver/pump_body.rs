    /// Takes in what the peer sent, without waiting (for `available`): a no-op while another
    /// task pumps.
    pub(crate) fn pump_now(&self) {
        self.pump_some(usize::MAX);
    }

    /// [`pump_now`](Self::pump_now) with at most `reads` socket reads (the idle drain: one
    /// session streaming at us must not hold the monitor thread; the rest waits for the next
    /// look, the socket still readable).
    pub(crate) fn pump_some(&self, reads: usize) {
        let Ok(mut m) = self.machine.try_lock() else {
            return;
        };
        if self.is_closed() {
            return;
        }
        if let Err(reason) = self.pump(&mut m, true, reads) {
            drop(m);
            self.shutdown(reason);
            return;
        }
        let hot = self.settings.sync != SyncMode::Event
            && self.settings.can_spin
            && self.waiters.is_empty();
        if !hot {
            self.lower_flag(&mut m);
        }
    }

    /// For the idle drain: `None` while the session is closed or something waits on it,
    /// otherwise how many elements have ever been taken from the receive queue (which moves
    /// while anyone pumps).
    pub(crate) fn idle_mark(&self) -> Option<i64> {
        if self.is_closed() || !self.waiters.is_empty() {
            return None;
        }
        Some(lock(&self.shm.recv).queue().stats().head)
    }

    /// The session's socket, for the idle drain's `poll(2)`.
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.conn.as_fd()
    }

    /// Whether the receive queue holds elements or frames wait to be sent: work for a pump
    /// that the socket's readiness does not show.
    pub(crate) fn has_work_waiting(&self) -> bool {
        let queued = !lock(&self.shm.recv).queue().is_empty().unwrap_or(false);
        queued || !lock(&self.out).is_empty()
    }


    /// Lowers the receive queue's working flag, draining what arrived meanwhile.
    fn lower_flag(&self, m: &mut Machine) {
        match m.spinner {
            // A live spinner owns the flag.
            Some(s) if s.lease > Instant::now() => return,
            // One whose task stopped polling it (a cancelled read) owns nothing.
            Some(_) => m.spinner = None,
            None => {}
        }
        loop {
            let drained = lock(&self.shm.recv).finish_drain();
            match drained {
                Ok(Drain::Idle) => return,
                Ok(Drain::Again) => {
                    if let Err(reason) = self.drain_queue() {
                        self.shutdown(reason);
                        return;
                    }
                }
                Err(e) => {
                    self.shutdown(CloseReason::Violation(format!(
                        "receive queue corrupted: {e}"
                    )));
                    return;
                }
            }
        }
    }
    /// Drains the receive queue (if `queue`) and reads the socket until it has nothing more
    /// or `reads` reads were made (none: the socket is not looked at). An error ends the
    /// session (counted in Go's `event_conn_error_count` unless the peer just left).
    fn pump(&self, m: &mut Machine, queue: bool, reads: usize) -> Result<(), CloseReason> {
        let result = if queue { self.drain_queue() } else { Ok(()) }.and_then(|()| {
            if reads > 0 {
                self.pump_socket(m, reads)
            } else {
                Ok(())
            }
        });
        if let Err(reason) = &result {
            if !matches!(reason, CloseReason::Peer) {
                lock(&self.state)
                    .core
                    .metrics_mut()
                    .stability
                    .event_conn_error_count += 1;
            }
        }
        result
    }

    fn pump_socket(&self, m: &mut Machine, reads: usize) -> Result<(), CloseReason> {
        self.flush_out_now();
        let mut cx = Context::from_waker(&self.session_waker);
        for _ in 0..reads {
            match self.reactor.poll_recv(&mut cx, &mut m.buf) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => {
                    // Whatever the peer pushed before it closed is delivered first.
                    self.drain_queue()?;
                    let cut = m.decoder.pending();
                    if cut > 0 {
                        return Err(CloseReason::Violation(format!(
                            "the peer closed the connection in the middle of a frame \
                             ({cut} bytes of it received)"
                        )));
                    }
                    return Err(CloseReason::Peer);
                }
                Poll::Ready(Ok(n)) => {
                    m.decoder.extend(&m.buf[..n]);
                    loop {
                        let frame = match m.decoder.next_frame() {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(e) => {
                                return Err(CloseReason::Violation(format!("bad frame: {e}")));
                            }
                        };
                        self.handle_frame(&frame)?;
                    }
                }
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => {
                    return Err(match e.kind() {
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                            CloseReason::Peer
                        }
                        _ => CloseReason::Lost(format!("socket read failed: {e}")),
                    });
                }
            }
        }
        Ok(())
    }

    /// Handles one control frame from the peer.
    fn handle_frame(&self, frame: &Frame<'_>) -> Result<(), CloseReason> {
        // The peer pushed everything it queued before it wrote this frame (a StreamClose
        // sent because the queue was full, fallback data, ...): while our flag is up it sends
        // no Polling, so drain first, or the frame would overtake those elements.
        if !matches!(frame.message, Message::Polling) {
            self.drain_queue()?;
        }
        let now = self.now_ms();
        self.with_core(|core, mut sink| core.on_frame(frame, now, &mut sink))
            .map_err(|e| CloseReason::Violation(e.to_string()))?;
        if let Message::Polling = frame.message {
            self.drain_queue()?;
        }
        Ok(())
    }

    /// Pops every element of the receive queue and routes it (one state lock per batch).
    fn drain_queue(&self) -> Result<(), CloseReason> {
        let corrupt =
            |e: QueueError| CloseReason::Violation(format!("receive queue corrupted: {e}"));
        let mut consumer = lock(&self.shm.recv);
        let Some(first) = consumer.pop().map_err(corrupt)? else {
            return Ok(());
        };
        self.with_core(|core, mut sink| {
            core.on_element(first, &self.shm.buffers, &mut sink)
                .map_err(|e| CloseReason::Violation(e.to_string()))?;
            while let Some(element) = consumer.pop().map_err(corrupt)? {
                core.on_element(element, &self.shm.buffers, &mut sink)
                    .map_err(|e| CloseReason::Violation(e.to_string()))?;
            }
            Ok(())
        })
    }

    /// Runs `f` on the core session with a sink that routes deliveries to streams.
    fn with_core<R>(
        &self,
        f: impl FnOnce(&mut core_session::Session, &mut dyn FnMut(Delivery<'_>)) -> R,
    ) -> R {
        let mut state = lock(&self.state);
        let State {
            core,
            streams,
            accept,
            accept_wakers,
            ..
        } = &mut *state;
        let mut opened = false;
        let result = f(core, &mut |d| opened |= self.deliver(streams, accept, d));
        if opened {
            for w in accept_wakers.drain(..) {
                w.wake();
            }
        }
        result
    }

    /// Routes one delivery; returns whether a stream was opened (to wake acceptors).
    fn deliver(
        &self,
        streams: &mut HashMap<u32, Arc<StreamShared>>,
        accept: &mut VecDeque<Arc<StreamShared>>,
        delivery: Delivery<'_>,
    ) -> bool {
        match delivery {
            Delivery::Opened(id) => {
                let shared = Arc::new(StreamShared::new(id));
                streams.insert(id, Arc::clone(&shared));
                accept.push_back(shared);
                tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream opened by the peer");
                return true;
            }
            Delivery::Shm { stream_id, segment } => {
                let rejected = match streams.get(&stream_id) {
                    Some(s) => s.push(Piece::Shm(segment)),
                    None => Some(Piece::Shm(segment)),
                };
                if let Some(Piece::Shm(segment)) = rejected {
                    self.recycle(segment);
                }
            }
            // An empty fallback frame carries no data; queuing it would read as a false end.
            Delivery::Fallback { data: [], .. } => {}
            Delivery::Fallback { stream_id, data } => {
                if let Some(s) = streams.get(&stream_id) {
                    let _ = s.push(Piece::Heap(data.to_vec()));
                }
            }
            Delivery::Closed(id) => {
                if let Some(s) = streams.get(&id) {
                    tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream closed by the peer");
                    s.peer_closed();
                }
            }
            Delivery::Recycle(slice) => {
                let _ = self.shm.buffers.recycle(slice);
            }
            Delivery::HotRestart { .. } => {}
        }
        false
    }

    pub(crate) fn recycle(&self, segment: Segment) {
        // A failure means the slice was already free: a peer bug we must not amplify.
        let _ = self.shm.buffers.recycle(segment.slice);
    }
