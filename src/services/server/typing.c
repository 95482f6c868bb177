/* The messaging service: typing indicators (see messaging.c). */
#include "services/server/msg_internal.h"

/* ---- typing ---- */

static void typing_maybe_free(mtyping *t)
{
    if (t->typing || t->shown || ptimer_armed(&t->expire) || ptimer_armed(&t->throttle)) return;
    pmap_del(&t->svc->typing, t->key, t->klen);
    free(t);
}

static void typing_relay(mtyping *t)
{
    msg_service *svc = t->svc;
    msg_typing mt;
    memset(&mt, 0, sizeof mt);
    memcpy(mt.conversation, t->conv.id, sizeof mt.conversation);
    memcpy(mt.user, t->user, sizeof mt.user);
    mt.start = t->typing;
    pbuf *b = &svc->scratch2;
    b->len = 0;
    int rc = pbuf_append(b, "[", 1);
    if (rc == 0) rc = msg_encode_typing(b, &mt);
    if (rc == 0) rc = pbuf_append(b, "]", 1);
    if (!msvc_json_done(b, rc)) return;
    char rooms[2][ROOM_NAME_MAX], except[ROOM_NAME_MAX];
    const char *r[1] = {rooms[0]}, *x = except;
    parley_target to = {.rooms = r, .nrooms = 1};
    if (t->conv.kind == MSG_CONV_DM) {
        room_of_user(rooms[0], msg_conv_peer(&t->conv, t->user));
    } else {
        room_of_conv(rooms[0], t->conv.id);
        room_of_user(except, t->user);
        to.except = &x;
        to.nexcept = 1;
    }
    /* Not volatile: a dropped stop would leave others seeing a typist
     * (polling clients between two GETs cannot take anything at once). */
    parley_broadcast(svc->nsp, &to, MSG_EV_TYPING_OUT, (const char *)b->ptr, NULL, 0);
    svc->mx.typing_relayed++;
    t->shown = t->typing;
    t->relayed = true;
    t->last_relay = ploop_now(svc->loop);
}

/* Brings what others see in line with t->typing, at most one change per
 * throttle interval; frees t when there is nothing left to do. */
static void typing_update(mtyping *t)
{
    msg_service *svc = t->svc;
    if (t->typing != t->shown && !ptimer_armed(&t->throttle)) {
        uint64_t now = ploop_now(svc->loop);
        uint64_t next = t->relayed ? t->last_relay + svc->o.typing_throttle_ms : now;
        if (next <= now)
            typing_relay(t);
        else
            ploop_timer_start(svc->loop, &t->throttle, next - now);
    }
    typing_maybe_free(t);
}

static void on_typing_expire(ptimer *p)
{
    mtyping *t = PARLEY_CONTAINER_OF(p, mtyping, expire);
    t->typing = false;
    typing_update(t);
}

static void on_typing_throttle(ptimer *p)
{
    typing_update(PARLEY_CONTAINER_OF(p, mtyping, throttle));
}

void typing_set(msg_service *svc, const msg_conv *c, const char *user, bool start)
{
    char key[MSG_CONV_MAX + MSG_USER_MAX + 2];
    int klen = snprintf(key, sizeof key, "%s\n%s", c->id, user);
    mtyping *t = pmap_get(&svc->typing, key, (size_t)klen);
    if (!t) {
        if (!start) return; /* nothing shown, nothing to stop */
        t = pcalloc(1, sizeof *t);
        if (!t) return;
        t->svc = svc;
        memcpy(t->key, key, (size_t)klen + 1);
        t->klen = (size_t)klen;
        t->conv = *c;
        snprintf(t->user, sizeof t->user, "%s", user);
        ptimer_init(&t->expire, on_typing_expire);
        ptimer_init(&t->throttle, on_typing_throttle);
        if (pmap_put(&svc->typing, t->key, t->klen, t) != 0) {
            free(t);
            return;
        }
    }
    t->typing = start;
    if (start)
        ploop_timer_start(svc->loop, &t->expire, svc->o.typing_timeout_ms);
    else
        ploop_timer_stop(svc->loop, &t->expire);
    typing_update(t);
}
