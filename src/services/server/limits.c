/* The messaging service: limits: refusals, strikes and kicks, disk space, per-user rates (see
 * messaging.c). */
#include "services/server/msg_internal.h"

/* ---- limits ---- */

#define STRIKE_GRACE_MS 1000 /* refusals this soon after a run began are not strikes */
#define STRIKE_GAP_MS   2000 /* without a refusal for this long, a run ends */

/* Refuses a request over a limit or quota: the error acknowledgement with
 * its retry hint, and for rate limits a strike against the socket; a
 * socket whose strikes run out (it keeps sending after being told) is
 * disconnected at the end of the event (ms->kick). */
void refuse_limit(msg_service *svc, msess *ms, int64_t ack_id, msg_errcode code, uint64_t retry_ms,
                  const char *field, const char *what)
{
    msg_error err;
    msg_fail(&err, code, field, "%s", what);
    err.retry_after_ms = (int64_t)retry_ms;
    reply_error(svc, ms, ack_id, &err);
    uint64_t now = ploop_now(svc->loop), held;
    if (code == MSG_E_RATE_LIMITED)
        svc->stats.rate_limited++;
    else if (code == MSG_E_QUOTA_EXCEEDED)
        svc->stats.quota_exceeded++;
    else
        svc->stats.storage_full++;
    if (plog_limit_ok(&svc->log_refused, now, LOG_EVERY_MS, &held))
        plog_info("messaging: %s for %s: %s (%llu more refusals since the last line)",
                  msg_errcode_name(code), ms->user ? ms->user->id : "?", what,
                  (unsigned long long)held);
    if (code != MSG_E_RATE_LIMITED) return;
    /* Hammering is sending on and on after being told to wait. Refusals
     * come in runs (a run ends after STRIKE_GAP_MS without one); the first
     * STRIKE_GRACE_MS of a run are free — what was already on the wire
     * when the first refusal left, a queue replayed at once — and after
     * that each refusal takes a strike from a bucket that refills faster
     * than a client that waits for each hint can be refused (about one
     * refusal per message it gets through), so only floods empty it. */
    if (!ms->last_refusal || now - ms->last_refusal > STRIKE_GAP_MS) ms->streak_since = now;
    ms->last_refusal = now;
    if (now > ms->streak_since + STRIKE_GRACE_MS && !ms->kick &&
        !prate_take(&ms->strikes, &mquota_opts_of(svc->quota)->strikes, now, 1, NULL)) {
        ms->kick = true;
        ms->refs++; /* until the kick is done */
        ms->next_kick = svc->kicks;
        svc->kicks = ms;
        msvc_schedule(svc);
    }
}

/* The socket kept sending over its limits: once the iteration's answers
 * are out, it is told why, then disconnected ("io server disconnect" for
 * Socket.IO clients). */
void msvc_kick(msg_service *svc, msess *ms)
{
    if (!ms->sock) return;
    svc->stats.kicked++;
    uint64_t held;
    if (plog_limit_ok(&svc->log_kicked, ploop_now(svc->loop), LOG_EVERY_MS, &held))
        plog_warn("messaging: socket %s of %s kept sending over its limits: disconnected (%llu "
                  "more since the last line)",
                  parley_socket_id(ms->sock), ms->user->id, (unsigned long long)held);
    static const char why[] = "[{\"code\":\"rate_limited\",\"message\":\"kept sending over "
                              "the rate limits after being told: disconnected\"}]";
    parley_emit(ms->sock, MSG_EV_DISCONNECT_REASON, why, NULL, 0);
    parley_disconnect(ms->sock, 0); /* ms may be freed here */
}

/* True when free disk space is below the reserve (checked at most once a
 * second): writes that add data are then refused with storage_full,
 * reads go on. */
bool disk_low(msg_service *svc)
{
    uint64_t reserve = mquota_opts_of(svc->quota)->disk_reserve;
    if (!reserve || !svc->data_dir) return false;
    uint64_t now = ploop_now(svc->loop);
    if (svc->disk_checked && now - svc->disk_checked < 1000) return svc->disk_low;
    svc->disk_checked = now;
    struct statvfs v;
    bool low = statvfs(svc->data_dir, &v) == 0 && (uint64_t)v.f_bavail * v.f_frsize < reserve;
    uint64_t held;
    if (low != svc->disk_low || (low && plog_limit_ok(&svc->log_disk, now, 60000, &held))) {
        if (low)
            plog_error("messaging: free space in %s is below the reserve of %llu bytes: writes "
                       "are refused (storage_full) until there is room",
                       svc->data_dir, (unsigned long long)reserve);
        else
            plog_warn("messaging: free space in %s is back above the reserve: writes accepted",
                      svc->data_dir);
    }
    svc->disk_low = low;
    return low;
}

/* Refuses a write when the disk is low; true when refused. */
bool refuse_if_disk_low(msg_service *svc, msess *ms, int64_t ack_id)
{
    if (!disk_low(svc)) return false;
    refuse_limit(svc, ms, ack_id, MSG_E_STORAGE_FULL, 60000, NULL,
                 "the server is low on storage: writes are refused for now, reads work");
    return true;
}

/* A per-user rate: true when the request may go on, otherwise refused. */
bool user_rate_ok(msg_service *svc, msess *ms, int64_t ack_id, mquota_user_kind kind, uint64_t cost,
                  const char *what)
{
    uint64_t retry = 0;
    if (mquota_user_take(svc->quota, ms->user->id, kind, cost, &retry)) return true;
    refuse_limit(svc, ms, ack_id, MSG_E_RATE_LIMITED, retry, NULL, what);
    return false;
}
