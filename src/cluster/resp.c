/* RESP2 reader on hiredis' and our command writer (see resp.h). */
#include "cluster/resp.h"

#include <hiredis/read.h>
#include <stdio.h>
#include <string.h>

#include "parley/parley.h"

/* The reply-object functions. Their return value only has to be non-NULL
 * (NULL makes hiredis fail the reader); the reply is built in rd->rep. */

static int refuse(presp_reader *rd, int err, const char *why)
{
    if (!rd->err) {
        rd->err = err;
        rd->why = why;
    }
    return 0;
}

/* The value a task fills: the reply itself (slot 0) or an element of the
 * top array (slot idx + 1). NULL (and rd->err set) for anything deeper. */
static presp_val *slot(const redisReadTask *t, presp_reader **rdp, size_t *k)
{
    presp_reader *rd = t->privdata;
    *rdp = rd;
    if (!t->parent) {
        *k = 0;
        return &rd->rep.v;
    }
    if (t->parent->parent || t->idx < 0 || t->idx >= PRESP_MAX_ELEMS) {
        refuse(rd, PARLEY_EPROTO, "nested array");
        return NULL;
    }
    *k = (size_t)t->idx + 1;
    return &rd->rep.el[t->idx];
}

static void *mk_string(const redisReadTask *t, char *s, size_t len)
{
    presp_reader *rd;
    size_t k;
    presp_val *v = slot(t, &rd, &k);
    if (!v) return NULL;
    if (t->type == REDIS_REPLY_STRING && len > rd->max_bulk)
        return refuse(rd, PARLEY_ELIMIT, "a bulk string over the size limit"), NULL;
    if (len > rd->cap - rd->arena.len)
        return refuse(rd, PARLEY_ELIMIT, "a reply over the size limit"), NULL;
    rd->off[k] = rd->arena.len;
    if (pbuf_append(&rd->arena, s, len)) return refuse(rd, PARLEY_ENOMEM, "out of memory"), NULL;
    v->type = t->type == REDIS_REPLY_STRING ? '$' : t->type == REDIS_REPLY_ERROR ? '-' : '+';
    v->len = len;
    v->p = (const uint8_t *)""; /* resolved when the reply is complete */
    if (k == 0) rd->rep.type = v->type;
    return v;
}

static void *mk_array(const redisReadTask *t, int n)
{
    presp_reader *rd = t->privdata;
    if (t->parent) return refuse(rd, PARLEY_EPROTO, "nested array"), NULL;
    if (n < 0 || n > PRESP_MAX_ELEMS)
        return refuse(rd, PARLEY_EPROTO, "an array over 8 elements"), NULL;
    rd->rep.type = '*';
    rd->rep.n = (size_t)n;
    return &rd->rep;
}

static void *mk_integer(const redisReadTask *t, long long i)
{
    presp_reader *rd;
    size_t k;
    presp_val *v = slot(t, &rd, &k);
    if (!v) return NULL;
    v->type = ':';
    v->i = i;
    if (k == 0) rd->rep.type = ':';
    return v;
}

static void *mk_nil(const redisReadTask *t)
{
    presp_reader *rd;
    size_t k;
    if (t->type == REDIS_REPLY_ARRAY) { /* "*-1" */
        rd = t->privdata;
        if (t->parent) return refuse(rd, PARLEY_EPROTO, "nested array"), NULL;
        rd->rep.type = '*';
        rd->rep.nil = 1;
        return &rd->rep;
    }
    presp_val *v = slot(t, &rd, &k);
    if (!v) return NULL;
    v->type = '$';
    v->p = NULL;
    v->len = 0;
    if (k == 0) {
        rd->rep.type = '$';
        rd->rep.nil = 1;
    }
    return v;
}

static void free_nothing(void *obj)
{
    (void)obj; /* everything lives in the presp_reader */
}

static redisReplyObjectFunctions fns = {
    .createString = mk_string,
    .createArray = mk_array,
    .createInteger = mk_integer,
    .createNil = mk_nil,
    .freeObject = free_nothing,
};

static int make(presp_reader *rd)
{
    rd->r = redisReaderCreateWithFunctions(&fns);
    if (!rd->r) return PARLEY_ENOMEM;
    /* Keep the buffer when it drains (see resp.h): bounded by cap. */
    rd->r->maxbuf = 0;
    rd->r->privdata = rd;
    return 0;
}

int presp_reader_init(presp_reader *rd, size_t max_bulk)
{
    memset(rd, 0, sizeof *rd);
    rd->max_bulk = max_bulk;
    rd->cap = max_bulk + PRESP_SLACK;
    int rc = pbuf_reserve(&rd->arena, 256);
    if (rc == 0) rc = make(rd);
    if (rc) presp_reader_free(rd);
    return rc;
}

void presp_reader_free(presp_reader *rd)
{
    if (rd->r) redisReaderFree(rd->r);
    pbuf_free(&rd->arena);
    memset(rd, 0, sizeof *rd);
}

int presp_reader_reset(presp_reader *rd)
{
    /* hiredis 0.14 has no reset: a new reader (once per connection). */
    if (rd->r) redisReaderFree(rd->r);
    rd->r = NULL;
    memset(&rd->rep, 0, sizeof rd->rep);
    rd->arena.len = 0;
    rd->err = 0;
    rd->handed = 0;
    rd->why = NULL;
    return make(rd);
}

size_t presp_reader_room(const presp_reader *rd)
{
    if (!rd->r || rd->err) return 0;
    size_t held = rd->r->len - rd->r->pos;
    return held < rd->cap ? rd->cap - held : 0;
}

int presp_feed(presp_reader *rd, const uint8_t *p, size_t len)
{
    if (rd->err) return rd->err;
    if (len > presp_reader_room(rd)) {
        refuse(rd, PARLEY_ELIMIT, "more unconsumed bytes than the size limit");
        return rd->err;
    }
    if (len && redisReaderFeed(rd->r, (const char *)p, len) != REDIS_OK) {
        refuse(rd, PARLEY_ENOMEM, "out of memory");
        return rd->err;
    }
    return 0;
}

static void resolve(presp_reader *rd, presp_val *v, size_t k)
{
    if ((v->type == '+' || v->type == '-' || v->type == '$') && v->p)
        v->p = rd->arena.ptr + rd->off[k];
}

int presp_next(presp_reader *rd, const presp_reply **out)
{
    *out = NULL;
    if (rd->err) return rd->err;
    if (!rd->r) return PARLEY_ENOMEM;
    if (rd->handed) {
        memset(&rd->rep, 0, sizeof rd->rep);
        rd->arena.len = 0;
        rd->handed = 0;
    }
    void *obj = NULL;
    if (redisReaderGetReply(rd->r, &obj) != REDIS_OK) {
        /* Ours (refuse) if a reply-object function said no, else hiredis'
         * own: a protocol error, or out of memory. */
        if (!rd->err) {
            if (rd->r->err == REDIS_ERR_OOM)
                refuse(rd, PARLEY_ENOMEM, "out of memory");
            else
                refuse(rd, PARLEY_EPROTO, "malformed reply");
        }
        return rd->err;
    }
    if (!obj) return 0;
    if (rd->rep.type == '*') {
        for (size_t i = 0; i < rd->rep.n; i++) resolve(rd, &rd->rep.el[i], i + 1);
    } else {
        resolve(rd, &rd->rep.v, 0);
    }
    rd->handed = 1;
    *out = &rd->rep;
    return 1;
}

const char *presp_reader_error(const presp_reader *rd)
{
    if (!rd->err) return NULL;
    if (rd->err == PARLEY_EPROTO && rd->r && rd->r->err && !strcmp(rd->why, "malformed reply"))
        return rd->r->errstr;
    return rd->why;
}

int presp_command(pbuf *out, size_t argc, const char *const *argv, const size_t *lens)
{
    char head[32];
    int n = snprintf(head, sizeof head, "*%zu\r\n", argc);
    int rc = pbuf_append(out, head, (size_t)n);
    for (size_t i = 0; rc == 0 && i < argc; i++) {
        size_t len = lens ? lens[i] : strlen(argv[i]);
        n = snprintf(head, sizeof head, "$%zu\r\n", len);
        rc = pbuf_append(out, head, (size_t)n);
        if (rc == 0) rc = pbuf_append(out, argv[i], len);
        if (rc == 0) rc = pbuf_append(out, "\r\n", 2);
    }
    return rc;
}
