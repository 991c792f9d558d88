/* Protobuf wire format for the gRPC stream's events, written from the
 * event objects' attributes (export/pb.py).
 *
 * Building a upb message from an event and serializing it cost ~8 us per
 * event, most of it setting fields one Python call at a time, and capped
 * one gRPC subscriber at ~55,000 events/s (bench/grpc_stream.py). Here a
 * Message is a table of fields, each with its number, its type and the
 * attribute that holds its value; export/pb.py builds the tables from the
 * generated descriptors at import, so field numbers and types have one
 * source, the .proto. This file knows only the wire format.
 *
 * What it writes is what upb's SerializeToString(deterministic=True) writes
 * for the same message: fields in table order (export/pb.py sorts them by
 * number), implicit-presence scalars only when not zero or empty, fields
 * with presence (optional, messages) when not None (None: unset, for any
 * field, as upb's message constructors take it), map entries sorted as
 * upb sorts them (encode_map) with key and value always written.
 * Out-of-range integers and non-str strings raise, as upb does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Field kinds (export/pb.py maps descriptor types to these). */
enum {
    K_STRING = 1,
    K_BOOL,
    K_UINT32,
    K_UINT64,
    K_INT32,
    K_INT64,
    K_MESSAGE,   /* the attribute's object, written by the sub-Message */
    K_TIMESTAMP, /* an int of nanoseconds, as google.protobuf.Timestamp (sub: its two fields) */
    K_MAP,       /* a mapping, entries sorted by key (sub: the entry's key and value fields) */
};
#define F_OPTIONAL 0x100 /* explicit presence: written when not None, even if zero */
#define F_REPEATED 0x200 /* a sequence of values, each written */

typedef struct Message Message;

typedef struct {
    uint8_t tag[5];
    uint8_t taglen;
    int kind;
    int flags;
    PyObject *attr; /* interned attribute name; NULL: the object itself */
    Message *sub;
} Field;

struct Message {
    PyObject_HEAD
    Py_ssize_t n;
    Field *fields;
};

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Out;

static int
grow(Out *o, Py_ssize_t need)
{
    if (o->len + need <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + need)
        cap *= 2;
    char *b = PyMem_Realloc(o->buf, (size_t)cap);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

static int
put(Out *o, const void *data, Py_ssize_t n)
{
    if (grow(o, n))
        return -1;
    memcpy(o->buf + o->len, data, (size_t)n);
    o->len += n;
    return 0;
}

static int
varint_len(uint64_t v)
{
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static void
write_varint(char *p, uint64_t v)
{
    while (v > 0x7F) {
        *p++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *p = (char)v;
}

static int
put_varint(Out *o, uint64_t v)
{
    int n = varint_len(v);
    if (grow(o, n))
        return -1;
    write_varint(o->buf + o->len, v);
    o->len += n;
    return 0;
}

static int
put_tag(Out *o, const Field *f)
{
    return put(o, f->tag, f->taglen);
}

/* Close a length-delimited value begun at `start` (its content written
 * from start + 5 on, room left for the longest varint): write the length
 * and move the content up to it. */
static Py_ssize_t
open_len(Out *o)
{
    if (grow(o, 5))
        return -1;
    Py_ssize_t start = o->len;
    o->len += 5;
    return start;
}

static int
close_len(Out *o, Py_ssize_t start)
{
    Py_ssize_t size = o->len - start - 5;
    if (size > INT32_MAX) { /* protobuf's limit; past it, 5 varint bytes may not hold it */
        PyErr_SetString(PyExc_ValueError, "a protobuf message over 2 GiB");
        return -1;
    }
    int n = varint_len((uint64_t)size);
    write_varint(o->buf + start, (uint64_t)size);
    memmove(o->buf + start + n, o->buf + start + 5, (size_t)size);
    o->len = start + n + size;
    return 0;
}

static int
out_of_range(PyObject *v)
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError))
        return -1;
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "Value out of range: %R", v);
    return -1;
}

/* One scalar value's bits as a varint, or -1 with an error set. */
static int
scalar_bits(const Field *f, PyObject *v, uint64_t *bits)
{
    if (f->kind == K_BOOL) {
        int t = PyObject_IsTrue(v);
        if (t < 0)
            return -1;
        *bits = (uint64_t)t;
        return 0;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%R has type %s, but expected one of: int", v,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (f->kind == K_UINT32 || f->kind == K_UINT64) {
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return out_of_range(v);
        if (f->kind == K_UINT32 && u > UINT32_MAX)
            return out_of_range(v);
        *bits = u;
        return 0;
    }
    long long s = PyLong_AsLongLong(v);
    if (s == -1 && PyErr_Occurred())
        return out_of_range(v);
    if (f->kind == K_INT32 && (s < INT32_MIN || s > INT32_MAX))
        return out_of_range(v);
    *bits = (uint64_t)s; /* negative: ten bytes, sign-extended, as protobuf does */
    return 0;
}

static int
utf8(PyObject *v, const char **data, Py_ssize_t *size, PyObject **owned)
{
    *owned = NULL;
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%R has type %s, but expected one of: str", v,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (PyUnicode_IS_ASCII(v)) {
        *data = (const char *)PyUnicode_DATA(v);
        *size = PyUnicode_GET_LENGTH(v);
        return 0;
    }
    /* Not PyUnicode_AsUTF8AndSize: it would keep a UTF-8 copy in every
     * cached string. Lone surrogates raise UnicodeEncodeError, as in upb. */
    *owned = PyUnicode_AsUTF8String(v);
    if (*owned == NULL)
        return -1;
    *data = PyBytes_AS_STRING(*owned);
    *size = PyBytes_GET_SIZE(*owned);
    return 0;
}

static int encode_message(Out *o, const Message *m, PyObject *obj);

/* One value of field f; `always`: written even when zero or empty. */
static int
encode_value(Out *o, const Field *f, PyObject *v, int always)
{
    switch (f->kind) {
    case K_STRING: {
        const char *data;
        Py_ssize_t size;
        PyObject *owned;
        if (utf8(v, &data, &size, &owned))
            return -1;
        int rc = 0;
        if (size || always)
            rc = put_tag(o, f) || put_varint(o, (uint64_t)size) || put(o, data, size);
        Py_XDECREF(owned);
        return rc ? -1 : 0;
    }
    case K_MESSAGE: {
        if (put_tag(o, f))
            return -1;
        Py_ssize_t start = open_len(o);
        if (start < 0 || encode_message(o, f->sub, v))
            return -1;
        return close_len(o, start);
    }
    case K_TIMESTAMP: {
        if (!PyLong_Check(v)) {
            PyErr_Format(PyExc_TypeError, "timestamp %R is not an int of nanoseconds", v);
            return -1;
        }
        long long ns = PyLong_AsLongLong(v);
        if (ns == -1 && PyErr_Occurred())
            return out_of_range(v);
        long long sec = ns / 1000000000, nanos = ns % 1000000000;
        if (nanos < 0) { /* floor division, as divmod() */
            sec -= 1;
            nanos += 1000000000;
        }
        const Field *fs = &f->sub->fields[0], *fn = &f->sub->fields[1];
        if (put_tag(o, f))
            return -1;
        Py_ssize_t start = open_len(o);
        if (start < 0)
            return -1;
        if (sec && (put_tag(o, fs) || put_varint(o, (uint64_t)sec)))
            return -1;
        if (nanos && (put_tag(o, fn) || put_varint(o, (uint64_t)nanos)))
            return -1;
        return close_len(o, start);
    }
    default: {
        uint64_t bits;
        if (scalar_bits(f, v, &bits))
            return -1;
        if (!bits && !always)
            return 0;
        return put_tag(o, f) || put_varint(o, bits) ? -1 : 0;
    }
    }
}

/* The entries of a map, sorted as upb's deterministic serialization sorts
 * string keys: bytewise on their common prefix, the longer key first when
 * one is a prefix of the other. That is a plain bytes order of each key's
 * UTF-8 followed by 0xFF, a byte UTF-8 never holds. */
static int
encode_map(Out *o, const Field *f, PyObject *mapping)
{
    PyObject *items = PyMapping_Items(mapping);
    if (items == NULL)
        return -1;
    int rc = -1;
    const Field *key = &f->sub->fields[0], *value = &f->sub->fields[1];
    Py_ssize_t n = PyList_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        const char *data;
        Py_ssize_t size;
        PyObject *owned;
        if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
            PyErr_SetString(PyExc_TypeError, "mapping items must be pairs");
            goto done;
        }
        if (utf8(PyTuple_GET_ITEM(kv, 0), &data, &size, &owned))
            goto done;
        PyObject *sortkey = PyBytes_FromStringAndSize(NULL, size + 1);
        if (sortkey != NULL) {
            memcpy(PyBytes_AS_STRING(sortkey), data, (size_t)size);
            PyBytes_AS_STRING(sortkey)[size] = (char)0xFF;
        }
        Py_XDECREF(owned);
        PyObject *entry = sortkey ? PyTuple_Pack(2, sortkey, PyTuple_GET_ITEM(kv, 1)) : NULL;
        Py_XDECREF(sortkey);
        if (entry == NULL)
            goto done;
        PyList_SET_ITEM(items, i, entry); /* steals entry, releases kv */
        Py_DECREF(kv);
    }
    if (PyList_Sort(items))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kv = PyList_GET_ITEM(items, i), *k = PyTuple_GET_ITEM(kv, 0);
        Py_ssize_t klen = PyBytes_GET_SIZE(k) - 1;
        if (key->kind != K_STRING) {
            PyErr_SetString(PyExc_TypeError, "map keys must be strings");
            goto done;
        }
        if (put_tag(o, f))
            goto done;
        Py_ssize_t start = open_len(o);
        if (start < 0 || put_tag(o, key) || put_varint(o, (uint64_t)klen) ||
            put(o, PyBytes_AS_STRING(k), klen) ||
            encode_value(o, value, PyTuple_GET_ITEM(kv, 1), 1) || close_len(o, start))
            goto done;
    }
    rc = 0;
done:
    Py_DECREF(items);
    return rc;
}

static int
encode_field(Out *o, const Field *f, PyObject *obj)
{
    PyObject *v = f->attr ? PyObject_GetAttr(obj, f->attr) : Py_NewRef(obj);
    if (v == NULL)
        return -1;
    int rc = 0;
    if (v == Py_None) {
        /* Unset, as upb's constructors take None, whatever the field */
    } else if (f->kind == K_MAP) {
        rc = encode_map(o, f, v);
    } else if (f->flags & F_REPEATED) {
        PyObject *seq = PySequence_Fast(v, "a repeated field needs a sequence");
        if (seq == NULL) {
            rc = -1;
        } else {
            /* A list's item can go while its attributes' Python code runs. */
            for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && !rc; i++) {
                PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
                rc = encode_value(o, f, item, 1);
                Py_DECREF(item);
            }
            Py_DECREF(seq);
        }
    } else {
        rc = encode_value(o, f, v, f->flags & F_OPTIONAL);
    }
    Py_DECREF(v);
    return rc;
}

static int
encode_message(Out *o, const Message *m, PyObject *obj)
{
    if (Py_EnterRecursiveCall(" encoding a protobuf message"))
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; i < m->n && !rc; i++)
        rc = encode_field(o, &m->fields[i], obj);
    Py_LeaveRecursiveCall();
    return rc;
}

static PyTypeObject MessageType;

/* Length-delimited (2) or varint (0). Repeated scalars would be packed,
 * which this does not write: export/pb.py refuses a schema that has one. */
static int
wire_type(int kind)
{
    return kind == K_STRING || kind == K_MESSAGE || kind == K_TIMESTAMP || kind == K_MAP ? 2 : 0;
}

static int
Message_init(Message *self, PyObject *args, PyObject *kwds)
{
    PyObject *spec;
    static char *kwlist[] = {"fields", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyTuple_Type, &spec))
        return -1;
    if (self->fields != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Message is already initialized");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(spec);
    self->fields = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Field));
    if (self->fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Field *f = &self->fields[i];
        unsigned long number;
        int kind, flags;
        PyObject *attr, *sub;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(spec, i), "kiiOO;a field is (number, kind, "
                              "flags, attribute or None, sub-Message or None)",
                              &number, &kind, &flags, &attr, &sub))
            return -1;
        if (number < 1 || number > 536870911 || kind < K_STRING || kind > K_MAP) {
            PyErr_Format(PyExc_ValueError, "bad field number %lu or kind %d", number, kind);
            return -1;
        }
        int needs_sub = kind == K_MESSAGE || kind == K_TIMESTAMP || kind == K_MAP;
        if (needs_sub != (sub != Py_None) ||
            (sub != Py_None && !PyObject_TypeCheck(sub, &MessageType)) ||
            (attr != Py_None && !PyUnicode_Check(attr))) {
            PyErr_Format(PyExc_TypeError, "field %lu: bad attribute or sub-Message", number);
            return -1;
        }
        if ((kind == K_TIMESTAMP || kind == K_MAP) && ((Message *)sub)->n != 2) {
            PyErr_Format(PyExc_ValueError, "field %lu: its sub-Message needs two fields", number);
            return -1;
        }
        uint64_t tag = ((uint64_t)number << 3) | (uint64_t)wire_type(kind);
        f->taglen = (uint8_t)varint_len(tag);
        write_varint((char *)f->tag, tag);
        f->kind = kind;
        f->flags = flags;
        if (attr != Py_None) {
            Py_INCREF(attr);
            PyUnicode_InternInPlace(&attr);
            f->attr = attr;
        }
        f->sub = (Message *)Py_XNewRef(sub == Py_None ? NULL : sub);
        self->n = i + 1; /* what dealloc releases, should a later field fail */
    }
    return 0;
}

static int
Message_traverse(Message *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->n; i++)
        Py_VISIT(self->fields[i].sub);
    return 0;
}

static int
Message_clear(Message *self)
{
    for (Py_ssize_t i = 0; i < self->n; i++) {
        Py_CLEAR(self->fields[i].attr);
        Py_CLEAR(self->fields[i].sub);
    }
    return 0;
}

static void
Message_dealloc(Message *self)
{
    PyObject_GC_UnTrack(self);
    Message_clear(self);
    PyMem_Free(self->fields);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
finish(Out *o)
{
    PyObject *r = PyBytes_FromStringAndSize(o->buf, o->len);
    PyMem_Free(o->buf);
    return r;
}

static PyObject *
Message_encode(Message *self, PyObject *obj)
{
    Out o = {0};
    if (encode_message(&o, self, obj)) {
        PyMem_Free(o.buf);
        return NULL;
    }
    return finish(&o);
}

static PyObject *
Message_sized(Message *self, PyObject *obj)
{
    Out o = {0};
    Py_ssize_t start = open_len(&o);
    if (start < 0 || encode_message(&o, self, obj) || close_len(&o, start)) {
        PyMem_Free(o.buf);
        return NULL;
    }
    return finish(&o);
}

static PyMethodDef Message_methods[] = {
    {"encode", (PyCFunction)Message_encode, METH_O, "obj -> the message's wire bytes"},
    {"sized", (PyCFunction)Message_sized, METH_O,
     "obj -> its wire bytes after their length (a varint), as a length-delimited field's value"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "export._pbwire.Message",
    .tp_basicsize = sizeof(Message),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A protobuf message's fields, each (number, kind, flags, attribute, sub-Message)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Message_init,
    .tp_dealloc = (destructor)Message_dealloc,
    .tp_traverse = (traverseproc)Message_traverse,
    .tp_clear = (inquiry)Message_clear,
    .tp_methods = Message_methods,
};

/* -- processes, each written once ------------------------------------------ */

/* Processes by exec_id, each with its message's bytes after their length:
 * parents and ancestors recur in every event of their descendants. A hit
 * needs the same object (a new image of the pid is a new Process). Bounded
 * in entries and bytes, emptied when full. An entry is charged what it
 * keeps alive: its bytes and its process, the latter measured by the
 * `measure` table's size of it (NULL: by the bytes written, when the table
 * writes the whole process). A cut process's bytes are small, but its
 * process holds every argument. Several threads may share one:
 * it changes only while the GIL is held, unless `prepare` (Python) lets
 * another thread in, which at worst writes a process twice. */
typedef struct {
    PyObject_HEAD
    Message *table;
    Message *measure;
    PyObject *prepare; /* p -> the object the table writes; NULL: p itself */
    PyObject *entries; /* dict: exec_id -> (Process, bytes, charge) */
    Py_ssize_t limit, max_bytes, held;
} Cache;

static PyObject *exec_id_name;

/* What an entry for p with `n` bytes keeps alive, or -1 with an error set. */
static Py_ssize_t
charge(Cache *c, PyObject *p, Py_ssize_t n)
{
    if (c->measure == NULL)
        return 2 * n;
    Out o = {0};
    int rc = encode_message(&o, c->measure, p);
    PyMem_Free(o.buf);
    return rc ? -1 : n + o.len;
}

/* A new reference to the bytes of p, or NULL with an error set. */
static PyObject *
cache_get(Cache *c, PyObject *p)
{
    PyObject *key = PyObject_GetAttr(p, exec_id_name);
    if (key == NULL)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(c->entries, key);
    if (hit != NULL && PyTuple_GET_ITEM(hit, 0) == p) {
        Py_DECREF(key);
        return Py_NewRef(PyTuple_GET_ITEM(hit, 1));
    }
    PyObject *entry = NULL, *sized = NULL;
    if (PyErr_Occurred())
        goto done;
    PyObject *obj = c->prepare ? PyObject_CallOneArg(c->prepare, p) : Py_NewRef(p);
    if (obj == NULL)
        goto done;
    sized = Message_sized(c->table, obj);
    Py_DECREF(obj);
    if (sized == NULL)
        goto done;
    Py_ssize_t n = charge(c, p, PyBytes_GET_SIZE(sized));
    PyObject *cost = n < 0 ? NULL : PyLong_FromSsize_t(n);
    entry = cost ? PyTuple_Pack(3, p, sized, cost) : NULL;
    Py_XDECREF(cost);
    if (entry == NULL) {
        Py_CLEAR(sized);
        goto done;
    }
    /* `prepare` may have let another thread change the entries since. */
    PyObject *old = PyDict_GetItemWithError(c->entries, key);
    if (old == NULL && PyErr_Occurred()) {
        Py_CLEAR(sized);
        goto done;
    }
    if (old != NULL) /* another image of the pid: it goes */
        c->held -= PyLong_AsSsize_t(PyTuple_GET_ITEM(old, 2));
    if (PyDict_GET_SIZE(c->entries) >= c->limit + (old != NULL) ||
        c->held + n > c->max_bytes) {
        PyDict_Clear(c->entries);
        c->held = 0;
    }
    if (PyDict_SetItem(c->entries, key, entry)) {
        Py_CLEAR(sized);
        goto done;
    }
    c->held += n;
done:
    Py_XDECREF(entry);
    Py_DECREF(key);
    return sized;
}

static int
Cache_init(Cache *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"table", "limit", "max_bytes", "prepare", "measure", NULL};
    PyObject *table, *prepare = Py_None, *measure = Py_None;
    Py_ssize_t limit, max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!nn|OO", kwlist, &MessageType, &table,
                                     &limit, &max_bytes, &prepare, &measure))
        return -1;
    /* Once: its table may be in use by a get() this call is made from. */
    if (self->entries != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Cache is already initialized");
        return -1;
    }
    if (limit < 1 || max_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "a cache's bounds must be positive");
        return -1;
    }
    if (measure != Py_None && !PyObject_TypeCheck(measure, &MessageType)) {
        PyErr_SetString(PyExc_TypeError, "a cache's measure must be a Message or None");
        return -1;
    }
    if (!(self->entries = PyDict_New()))
        return -1;
    self->table = (Message *)Py_NewRef(table);
    self->measure = (Message *)(measure == Py_None ? NULL : Py_NewRef(measure));
    self->prepare = prepare == Py_None ? NULL : Py_NewRef(prepare);
    self->limit = limit;
    self->max_bytes = max_bytes;
    self->held = 0;
    return 0;
}

static int
Cache_traverse(Cache *self, visitproc visit, void *arg)
{
    Py_VISIT(self->table);
    Py_VISIT(self->measure);
    Py_VISIT(self->prepare);
    Py_VISIT(self->entries);
    return 0;
}

static int
Cache_clear(Cache *self)
{
    Py_CLEAR(self->table);
    Py_CLEAR(self->measure);
    Py_CLEAR(self->prepare);
    Py_CLEAR(self->entries);
    return 0;
}

static void
Cache_dealloc(Cache *self)
{
    PyObject_GC_UnTrack(self);
    Cache_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Cache_get(Cache *self, PyObject *p)
{
    if (self->entries == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Cache is not initialized");
        return NULL;
    }
    return cache_get(self, p);
}

static PyObject *
Cache_len(Cache *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->entries ? PyDict_GET_SIZE(self->entries) : 0);
}

static PyObject *
Cache_held(Cache *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->held);
}

static PyMethodDef Cache_methods[] = {
    {"get", (PyCFunction)Cache_get, METH_O, "process -> its sized bytes, written once"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Cache_getset[] = {
    {"entries", (getter)Cache_len, NULL, "processes held", NULL},
    {"held", (getter)Cache_held, NULL, "bytes charged: what the entries keep alive", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "export._pbwire.Cache",
    .tp_basicsize = sizeof(Cache),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Processes' sized bytes by exec_id: Cache(table, limit, max_bytes, prepare=None, "
               "measure=None)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Cache_init,
    .tp_dealloc = (destructor)Cache_dealloc,
    .tp_traverse = (traverseproc)Cache_traverse,
    .tp_clear = (inquiry)Cache_clear,
    .tp_methods = Cache_methods,
    .tp_getset = Cache_getset,
};

/* -- events ------------------------------------------------------------------ */

enum { A_NONE, A_BRIEF, A_FULL }; /* --ancestors */

/* Tags of the length-delimited fields the events are joined by. */
enum { T_PROCESS, T_PARENT, T_ANCESTOR, T_LINEAGE, T_LINEAGE_ANCESTOR, T_EVENTS, T_COUNT };

/* An event is its head (the Event message without processes) followed by
 * its processes' cached bytes as fields process, parent and ancestors (or
 * lineage): protobuf allows fields in any order, and repeated fields
 * concatenate. Within max_bytes: processes are written whole while they fit
 * whole_bytes, cut (the `cut` cache) from the first that does not, and left
 * out past max_bytes as if --ancestor-depth had stopped. */
typedef struct {
    PyObject_HEAD
    PyObject *heads; /* dict: event class -> (head Message, has processes) */
    Cache *whole, *cut, *brief;
    int ancestors;
    uint8_t tags[T_COUNT];
    Py_ssize_t whole_bytes, max_bytes;
} Events;

static PyObject *process_name, *parent_name, *ancestors_name;

static int
put_sized(Out *o, uint8_t tag, PyObject *sized)
{
    return put(o, &tag, 1) || put(o, PyBytes_AS_STRING(sized), PyBytes_GET_SIZE(sized));
}

/* The process fields, `total` bytes of the event being written so far. */
static int
put_chain(Events *e, Out *o, PyObject *ev, Py_ssize_t total)
{
    PyObject *chain[3] = {NULL, NULL, NULL}; /* process, parent, ancestors */
    int rc = -1;
    if (!(chain[0] = PyObject_GetAttr(ev, process_name)) ||
        !(chain[1] = PyObject_GetAttr(ev, parent_name)) ||
        !(chain[2] = PyObject_GetAttr(ev, ancestors_name)))
        goto done;
    if (!PyTuple_Check(chain[2])) {
        PyErr_SetString(PyExc_TypeError, "an event's ancestors must be a tuple");
        goto done;
    }
    Py_ssize_t nanc = e->ancestors == A_FULL ? PyTuple_GET_SIZE(chain[2]) : 0;
    int whole = 1, parts = 0;
    for (Py_ssize_t i = -2; i < nanc; i++) {
        PyObject *p = i == -2 ? chain[0] : i == -1 ? chain[1] : PyTuple_GET_ITEM(chain[2], i);
        uint8_t tag = e->tags[i == -2 ? T_PROCESS : i == -1 ? T_PARENT : T_ANCESTOR];
        if (p == Py_None) /* pid 1, kernel roots: no parent */
            continue;
        PyObject *data = whole ? cache_get(e->whole, p) : NULL;
        if (whole && data == NULL)
            goto done;
        if (!whole || total + PyBytes_GET_SIZE(data) > e->whole_bytes) {
            whole = 0;
            Py_XDECREF(data);
            if (!(data = cache_get(e->cut, p)))
                goto done;
            if (parts && total + 1 + PyBytes_GET_SIZE(data) > e->max_bytes) {
                Py_DECREF(data);
                break;
            }
        }
        int failed = put_sized(o, tag, data);
        total += 1 + PyBytes_GET_SIZE(data);
        parts++;
        Py_DECREF(data);
        if (failed)
            goto done;
    }
    if (e->ancestors == A_BRIEF) {
        /* Lineage: the ancestors named, as many as fit (a binary path can be 4 KiB). */
        if (put(o, &e->tags[T_LINEAGE], 1))
            goto done;
        Py_ssize_t start = open_len(o), size = 0;
        if (start < 0)
            goto done;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(chain[2]); i++) {
            PyObject *data = cache_get(e->brief, PyTuple_GET_ITEM(chain[2], i));
            if (data == NULL)
                goto done;
            Py_ssize_t n = PyBytes_GET_SIZE(data);
            if (total + 1 + 4 + size + 1 + n > e->max_bytes) {
                Py_DECREF(data);
                break;
            }
            int failed = put_sized(o, e->tags[T_LINEAGE_ANCESTOR], data);
            size += 1 + n;
            Py_DECREF(data);
            if (failed)
                goto done;
        }
        if (close_len(o, start))
            goto done;
    }
    rc = 0;
done:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(chain[i]);
    return rc;
}

static int
put_event(Events *e, Out *o, PyObject *ev)
{
    PyObject *head = PyDict_GetItemWithError(e->heads, (PyObject *)Py_TYPE(ev));
    if (head == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s is not an event", Py_TYPE(ev)->tp_name);
        return -1;
    }
    Py_INCREF(head); /* the event's attributes run Python code */
    Py_ssize_t start = o->len;
    int rc = encode_message(o, (Message *)PyTuple_GET_ITEM(head, 0), ev);
    if (!rc && PyTuple_GET_ITEM(head, 1) == Py_True)
        rc = put_chain(e, o, ev, o->len - start);
    Py_DECREF(head);
    return rc;
}

static PyObject *
events_write(Events *e, PyObject *ev, int framed)
{
    if (e->heads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Events is not initialized");
        return NULL;
    }
    Out o = {0};
    Py_ssize_t start = 0;
    if (framed && (put(&o, &e->tags[T_EVENTS], 1) || (start = open_len(&o)) < 0))
        goto fail;
    if (put_event(e, &o, ev))
        goto fail;
    if (framed && close_len(&o, start))
        goto fail;
    return finish(&o);
fail:
    PyMem_Free(o.buf);
    return NULL;
}

static PyObject *
Events_encode(Events *self, PyObject *ev)
{
    return events_write(self, ev, 0);
}

static PyObject *
Events_framed(Events *self, PyObject *ev)
{
    return events_write(self, ev, 1);
}

static int
Events_init(Events *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"heads", "whole", "cut", "brief", "ancestors", "tags",
                             "whole_bytes", "max_bytes", NULL};
    PyObject *heads, *whole, *cut, *brief;
    const char *tags;
    Py_ssize_t ntags;
    int ancestors;
    Py_ssize_t whole_bytes, max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!iy#nn", kwlist, &PyDict_Type, &heads,
                                     &CacheType, &whole, &CacheType, &cut, &CacheType, &brief,
                                     &ancestors, &tags, &ntags, &whole_bytes, &max_bytes))
        return -1;
    if (self->heads != NULL) { /* once: an encode() may be using what it holds */
        PyErr_SetString(PyExc_RuntimeError, "Events is already initialized");
        return -1;
    }
    if (ntags != T_COUNT || ancestors < A_NONE || ancestors > A_FULL) {
        PyErr_Format(PyExc_ValueError, "need %d one-byte tags and ancestors 0, 1 or 2", T_COUNT);
        return -1;
    }
    if (!((Cache *)whole)->entries || !((Cache *)cut)->entries || !((Cache *)brief)->entries) {
        PyErr_SetString(PyExc_RuntimeError, "Events needs initialized Caches");
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(heads, &pos, &key, &value)) {
        if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2 ||
            !PyObject_TypeCheck(PyTuple_GET_ITEM(value, 0), &MessageType) ||
            !PyBool_Check(PyTuple_GET_ITEM(value, 1))) {
            PyErr_SetString(PyExc_TypeError, "heads: class -> (Message, has processes)");
            return -1;
        }
    }
    /* A copy: the rows were checked, the caller's dict may change. */
    if (!(self->heads = PyDict_Copy(heads)))
        return -1;
    self->whole = (Cache *)Py_NewRef(whole);
    self->cut = (Cache *)Py_NewRef(cut);
    self->brief = (Cache *)Py_NewRef(brief);
    self->ancestors = ancestors;
    memcpy(self->tags, tags, T_COUNT);
    self->whole_bytes = whole_bytes;
    self->max_bytes = max_bytes;
    return 0;
}

static int
Events_traverse(Events *self, visitproc visit, void *arg)
{
    Py_VISIT(self->heads);
    Py_VISIT(self->whole);
    Py_VISIT(self->cut);
    Py_VISIT(self->brief);
    return 0;
}

static int
Events_clear(Events *self)
{
    Py_CLEAR(self->heads);
    Py_CLEAR(self->whole);
    Py_CLEAR(self->cut);
    Py_CLEAR(self->brief);
    return 0;
}

static void
Events_dealloc(Events *self)
{
    PyObject_GC_UnTrack(self);
    Events_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *type_name;

/* The exception being raised, if an Exception, as (ev, exc) appended to
 * `failed`: one event that cannot be written must not stop the stream. */
static int
fail_one(PyObject *failed, PyObject *ev)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *pair = PyTuple_Pack(2, ev, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    int rc = pair ? PyList_Append(failed, pair) : -1;
    Py_XDECREF(pair);
    return rc;
}

/* What the hub queues for its subscribers without a filter, for a whole
 * batch in one call: (type, framed) of each event that is not a `skip`
 * (loss reports, which the hub hands on otherwise), the events those are
 * of (in the same order), their total size, the skipped ones, and
 * (event, exception) of each that could not be written. */
static PyObject *
Events_items(Events *self, PyObject *args)
{
    PyObject *batch, *skip;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &batch, &PyType_Type, &skip))
        return NULL;
    /* A copy: the events' attributes run Python code, which may change the list. */
    PyObject *evs = PyList_AsTuple(batch);
    if (evs == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(evs), nbytes = 0;
    PyObject *items = PyList_New(0), *written = PyList_New(0), *skipped = PyList_New(0),
             *failed = PyList_New(0), *out = NULL;
    if (items == NULL || written == NULL || skipped == NULL || failed == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ev = PyTuple_GET_ITEM(evs, i);
        if ((PyObject *)Py_TYPE(ev) == skip) {
            if (PyList_Append(skipped, ev))
                goto done;
            continue;
        }
        PyObject *kind = PyObject_GetAttr(ev, type_name);
        PyObject *data = kind ? events_write(self, ev, 1) : NULL;
        if (data == NULL) {
            Py_XDECREF(kind);
            if (fail_one(failed, ev))
                goto done;
            continue;
        }
        nbytes += PyBytes_GET_SIZE(data);
        PyObject *item = PyTuple_Pack(2, kind, data);
        Py_DECREF(kind);
        Py_DECREF(data);
        if (item == NULL || PyList_Append(items, item) || PyList_Append(written, ev)) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    out = Py_BuildValue("OOnOO", items, written, nbytes, skipped, failed);
done:
    Py_DECREF(evs);
    Py_XDECREF(items);
    Py_XDECREF(written);
    Py_XDECREF(skipped);
    Py_XDECREF(failed);
    return out;
}

static PyMethodDef Events_methods[] = {
    {"encode", (PyCFunction)Events_encode, METH_O, "event -> its Event message's bytes"},
    {"framed", (PyCFunction)Events_framed, METH_O,
     "event -> its bytes as one GetEventsResponse.events field"},
    {"items", (PyCFunction)Events_items, METH_VARARGS,
     "(events, skip) -> ([(type, framed) of each not a skip], [the events written], "
     "their bytes, [the skipped], [(event, exception) of each that could not be written])"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EventsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "export._pbwire.Events",
    .tp_basicsize = sizeof(Events),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Events as Event messages, their processes from Caches (export/pb.py Encoder)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Events_init,
    .tp_dealloc = (destructor)Events_dealloc,
    .tp_traverse = (traverseproc)Events_traverse,
    .tp_clear = (inquiry)Events_clear,
    .tp_methods = Events_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "export._pbwire",
    .m_doc = "Protobuf wire format of event objects, by tables of fields (export/pb.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__pbwire(void)
{
    if (PyType_Ready(&MessageType) < 0 || PyType_Ready(&CacheType) < 0 ||
        PyType_Ready(&EventsType) < 0)
        return NULL;
    if (!(exec_id_name = PyUnicode_InternFromString("exec_id")) ||
        !(process_name = PyUnicode_InternFromString("process")) ||
        !(parent_name = PyUnicode_InternFromString("parent")) ||
        !(ancestors_name = PyUnicode_InternFromString("ancestors")) ||
        !(type_name = PyUnicode_InternFromString("type")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Message", (PyObject *)&MessageType) < 0 ||
        PyModule_AddObjectRef(m, "Cache", (PyObject *)&CacheType) < 0 ||
        PyModule_AddObjectRef(m, "Events", (PyObject *)&EventsType) < 0 ||
        PyModule_AddIntConstant(m, "ANCESTORS_NONE", A_NONE) < 0 ||
        PyModule_AddIntConstant(m, "ANCESTORS_BRIEF", A_BRIEF) < 0 ||
        PyModule_AddIntConstant(m, "ANCESTORS_FULL", A_FULL) < 0 ||
        PyModule_AddIntConstant(m, "STRING", K_STRING) < 0 ||
        PyModule_AddIntConstant(m, "BOOL", K_BOOL) < 0 ||
        PyModule_AddIntConstant(m, "UINT32", K_UINT32) < 0 ||
        PyModule_AddIntConstant(m, "UINT64", K_UINT64) < 0 ||
        PyModule_AddIntConstant(m, "INT32", K_INT32) < 0 ||
        PyModule_AddIntConstant(m, "INT64", K_INT64) < 0 ||
        PyModule_AddIntConstant(m, "MESSAGE", K_MESSAGE) < 0 ||
        PyModule_AddIntConstant(m, "TIMESTAMP", K_TIMESTAMP) < 0 ||
        PyModule_AddIntConstant(m, "MAP", K_MAP) < 0 ||
        PyModule_AddIntConstant(m, "OPTIONAL", F_OPTIONAL) < 0 ||
        PyModule_AddIntConstant(m, "REPEATED", F_REPEATED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
