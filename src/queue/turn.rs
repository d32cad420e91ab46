//! Calls made while holding a lease; each is fenced by the lease's epoch.

use super::*;

impl Queue {
    fn lease_keys(&self, lease: &Lease) -> ShardKeys {
        self.keys().for_conversation(&lease.conversation)
    }

    fn fenced(&self, lease: &Lease) -> QueueError {
        QueueError::Fenced(lease.conversation.clone())
    }

    /// Extend the lease. `Err(Fenced)` means it is lost: stop the turn.
    pub async fn renew(&self, lease: &Lease) -> Result<(), QueueError> {
        let k = self.lease_keys(lease);
        let cid = &lease.conversation;
        let mut conn = self.conn().await?;
        let ok: i64 = ScriptCall::new(&self.scripts().renew, k.renew_keys(cid))
            .arg(cid)
            .arg(lease.epoch)
            .arg(Self::ms(self.settings().lease_ttl))
            .invoke(&mut conn)
            .await?;
        if ok == 1 {
            Ok(())
        } else {
            Err(self.fenced(lease))
        }
    }

    /// Publish the reply's text so far (`seq` increases with each update).
    pub async fn progress(
        &self,
        lease: &Lease,
        part: u32,
        seq: u64,
        text: &str,
    ) -> Result<(), QueueError> {
        let k = self.lease_keys(lease);
        let cid = &lease.conversation;
        let mut conn = self.conn().await?;
        let ok: i64 = ScriptCall::new(&self.scripts().progress, k.progress_keys(cid))
            .arg(cid)
            .arg(lease.epoch)
            .arg(part)
            .arg(seq)
            .arg(text)
            .invoke(&mut conn)
            .await?;
        if ok == 1 {
            Ok(())
        } else {
            Err(self.fenced(lease))
        }
    }

    /// Store the agent's session (resume id and transcript) so any slot of
    /// any worker can resume the conversation.
    pub async fn save_session(
        &self,
        lease: &Lease,
        session_id: &str,
        transcript: &[u8],
    ) -> Result<(), QueueError> {
        let k = self.lease_keys(lease);
        let cid = &lease.conversation;
        let mut conn = self.conn().await?;
        let ok: i64 = ScriptCall::new(&self.scripts().save_session, k.save_session_keys(cid))
            .arg(cid)
            .arg(lease.epoch)
            .arg(session_id)
            .arg_bytes(transcript)
            .arg(Self::ms(self.settings().idle_ttl))
            .invoke(&mut conn)
            .await?;
        if ok == 1 {
            Ok(())
        } else {
            Err(self.fenced(lease))
        }
    }

    /// The stored transcript of a conversation's session, if any.
    pub async fn load_session(&self, cid: &ConversationId) -> Result<Option<Vec<u8>>, QueueError> {
        let key = self.keys().for_conversation(cid).session(cid);
        let mut conn = self.conn().await?;
        Ok(redis::cmd("GET").arg(key).query_async(&mut *conn).await?)
    }

    /// A slot gives up a conversation's live session (eviction): clear the
    /// owner if it is still `owner`, so the next turn resumes elsewhere
    /// instead of waiting for this slot. Returns whether it was cleared.
    pub async fn disown(&self, cid: &ConversationId, owner: &Owner) -> Result<bool, QueueError> {
        let k = self.keys().for_conversation(cid);
        let mut conn = self.conn().await?;
        let cleared: i64 = ScriptCall::new(&self.scripts().disown, k.disown_keys(cid))
            .arg(&owner.worker)
            .arg(owner.slot)
            .arg(owner.generation)
            .invoke(&mut conn)
            .await?;
        Ok(cleared == 1)
    }

    /// The commit call (public so tests can check its keys).
    pub fn commit_call(&self, lease: &Lease, commit: &Commit) -> ScriptCall<'_> {
        let k = self.lease_keys(lease);
        let cid = &lease.conversation;
        let (worker, slot, generation) = match &commit.owner {
            Some(o) => (o.worker.as_str().to_string(), o.slot, o.generation),
            None => (String::new(), 0, 0),
        };
        let charge = commit.charge.as_ref().filter(|_| k.shard == 0);
        let mut keys = k.commit_keys(cid);
        keys.extend(charge.map(|c| k.usage(&c.day)));
        let mut call = ScriptCall::new(&self.scripts().commit, keys)
            .arg(cid)
            .arg(lease.epoch)
            .arg(worker)
            .arg(slot)
            .arg(generation)
            .arg(micro_usd(commit.cost_usd))
            .arg(Self::ms(self.settings().idle_ttl))
            .arg(commit.final_seq);
        call = match &commit.session {
            Some(s) => call.arg(&s.id).arg_bytes(&s.transcript).arg(s.offset),
            None => call.arg("").arg("").arg(0),
        };
        call = match charge {
            Some(charge) => {
                let mut call = call.arg(charge.spend_fields.len() + 1);
                for field in &charge.spend_fields {
                    call = call.arg(field);
                }
                call.arg(&charge.turns_field)
                    .arg(micro_usd(charge.cost_usd))
                    .arg(USAGE_TTL_SECS)
            }
            None => call.arg(0),
        };
        for part in &commit.parts {
            call = call.arg(part);
        }
        call
    }

    /// Add a turn's cost to the day's usage (shard 0), in one round trip.
    pub async fn charge(&self, charge: &Charge) -> Result<(), QueueError> {
        let key = self.keys().shard(0).usage(&charge.day);
        let mut pipe = redis::pipe();
        let cost = micro_usd(charge.cost_usd);
        for field in &charge.spend_fields {
            pipe.hincr(&key, field, cost).ignore();
        }
        pipe.hincr(&key, &charge.turns_field, 1)
            .ignore()
            .expire(&key, USAGE_TTL_SECS)
            .ignore();
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// Commit the turn: reply to the outbox, trim the batch, release the
    /// lease, schedule the next batch. `Err(Fenced)`: someone else owns the
    /// conversation now and nothing was written.
    pub async fn commit(&self, lease: &Lease, commit: &Commit) -> Result<(), QueueError> {
        // Usage lives in shard 0: from another shard it is charged alongside.
        let apart = commit
            .charge
            .as_ref()
            .filter(|_| self.lease_keys(lease).shard != 0);
        let charged = async {
            if let Some(charge) = apart
                && let Err(e) = self.charge(charge).await
            {
                tracing::warn!(error = %e, "turn cost not recorded");
            }
        };
        let committed = async {
            let mut conn = self.conn().await?;
            self.commit_call(lease, commit)
                .invoke::<Vec<String>>(&mut conn)
                .await
                .map_err(QueueError::from)
        };
        let (reply, ()) = tokio::join!(committed, charged);
        let reply = reply?;
        match reply.first().map(String::as_str) {
            // The script woke the owner it routed a next batch to.
            Some("ok") => Ok(()),
            Some("fenced") => Err(self.fenced(lease)),
            Some("session_mismatch") => {
                Err(QueueError::SessionMismatch(lease.conversation.clone()))
            }
            _ => Err(super::protocol("commit", format!("{reply:?}"))),
        }
    }

    /// The turn failed. Retryable failures run again (resumed elsewhere) up
    /// to the attempt limit; then, or when not retryable, the batch is
    /// dead-lettered with one error reply.
    pub async fn fail(
        &self,
        lease: &Lease,
        reason: &str,
        retryable: bool,
    ) -> Result<FailOutcome, QueueError> {
        self.fail_with(lease, reason, retryable, super::DEAD_LETTER_TEXT)
            .await
    }

    /// Set the batch aside without running it (e.g. it waited too long),
    /// telling the sender `reply`.
    pub async fn refuse_batch(
        &self,
        lease: &Lease,
        reason: &str,
        reply: &str,
    ) -> Result<(), QueueError> {
        self.fail_with(lease, reason, false, reply)
            .await
            .map(|_| ())
    }

    async fn fail_with(
        &self,
        lease: &Lease,
        reason: &str,
        retryable: bool,
        reply: &str,
    ) -> Result<FailOutcome, QueueError> {
        let k = self.lease_keys(lease);
        let cid = &lease.conversation;
        let mut conn = self.conn().await?;
        let reply: Vec<String> = ScriptCall::new(&self.scripts().fail, k.turn_end_keys(cid))
            .arg(cid)
            .arg(lease.epoch)
            .arg(reason)
            .arg(if retryable { "1" } else { "0" })
            .arg(self.settings().max_attempts)
            .arg(reply)
            .invoke(&mut conn)
            .await?;
        match reply.first().map(String::as_str) {
            Some("retry") => Ok(FailOutcome::Retrying),
            Some("dead") => Ok(FailOutcome::DeadLettered),
            Some("fenced") => Err(self.fenced(lease)),
            _ => Err(super::protocol("fail", format!("{reply:?}"))),
        }
    }
}
