/* The decoding of the records posted most, file_open and connect, in C
 * (tracer/core/decode.py keeps every other kind, and the record classes).
 *
 * In Python a posted open's record cost ~1.4 us, most of it two dataclass
 * __init__ calls and the struct unpacking around them. Here the fields are
 * read by name from the wire structs of bpf_probes/tracer.h (checked
 * against the BPF object's BTF by tests/test_wire_layout.py), and the
 * records are made as the classes' own instances with their slots filled:
 * the classes are plain slotted dataclasses with no __post_init__, so that
 * is what their __init__ would do. The Decoder (built at import) refuses
 * a class unless the names below are its slots, each its own, and the
 * instance has no other slot nor a __dict__: a field added to a record
 * class and not here would otherwise be left unset in every record.
 *
 * A malformed record raises the caller's WireError with decode.py's
 * messages; the header checks (shorter than a header, larger than what
 * arrived) and the other kinds are left to decode.py: decode() returns
 * None for them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <linux/types.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>

#include "../../bpf_probes/tracer.h"

/* The size check decode.py makes: the record up to its last field, no padding. */
#define FILE_OPEN_FIXED offsetof(struct tr_file_open, path)
#define CONNECT_FIXED (offsetof(struct tr_connect, unix_path) + sizeof(((struct tr_connect *)0)->unix_path))
/* connect_of copies CONNECT_FIXED bytes: a member after unix_path would be
 * left uninitialized (only tail padding may follow it). */
_Static_assert(sizeof(struct tr_connect) - CONNECT_FIXED < _Alignof(struct tr_connect),
               "unix_path is the last member of struct tr_connect");
#define VERDICT_OFFSET offsetof(struct tr_file_open, verdict)
_Static_assert(offsetof(struct tr_connect, verdict) == VERDICT_OFFSET, "one verdict offset");
_Static_assert(offsetof(struct tr_exec, verdict) == VERDICT_OFFSET, "one verdict offset");
#define AUID_UNSET 0xFFFFFFFFu
/* Verdicts kept, whatever the records say (few rules exist). */
#define VERDICTS_MAX 4096

/* The fields of the record classes, in the order the values are made. */
static const char *const task_fields[] = {
    "ktime", "start_boottime", "cgroup_id", "pid", "tid", "ppid", "uid", "euid", "gid", "egid",
    "auid", "comm", "flags", NULL,
};
static const char *const file_open_fields[] = {
    "task", "verdict", "ret", "open_flags", "mode", "flags", "hook", "path", "op", "source", NULL,
};
static const char *const connect_fields[] = {
    "task", "verdict", "ret", "family", "protocol", "sock_type", "hook", "dport", "sport",
    "daddr", "saddr", "unix_path", "via", "flags", NULL,
};
#define MAX_FIELDS 16

/* Makes instances of a slotted class by filling its slots. */
typedef struct {
    PyTypeObject *cls;
    Py_ssize_t n;
    Py_ssize_t slots[MAX_FIELDS];
} Maker;

static int
maker_init(Maker *m, PyObject *cls, const char *const *names)
{
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "%R is not a class", cls);
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    Py_ssize_t n = 0, slots[MAX_FIELDS];
    for (; names[n] != NULL; n++) {
        if (n == MAX_FIELDS) {
            PyErr_Format(PyExc_ValueError, "at most %d fields", MAX_FIELDS);
            return -1;
        }
        PyObject *name = PyUnicode_FromString(names[n]);
        if (name == NULL)
            return -1;
        PyObject *d = _PyType_Lookup(type, name); /* borrowed */
        Py_DECREF(name);
        /* A descriptor taken from another class holds that class's offset:
         * as Python's own slot setter does, only the class's own are used. */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX ||
            !PyType_IsSubtype(type, PyDescr_TYPE(d))) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, names[n]);
            return -1;
        }
        slots[n] = ((PyMemberDescrObject *)d)->d_member->offset;
        /* make() would overwrite the first value without releasing it. */
        for (Py_ssize_t i = 0; i < n; i++)
            if (slots[i] == slots[n]) {
                PyErr_Format(PyExc_TypeError, "%s.%s is named twice", type->tp_name, names[n]);
                return -1;
            }
    }
    /* n distinct slots of the class filling the whole instance: none is left unset. */
    if (type->tp_itemsize != 0 || type->tp_dictoffset != 0 ||
        type->tp_basicsize != (Py_ssize_t)(sizeof(PyObject) + (size_t)n * sizeof(PyObject *))) {
        PyErr_Format(PyExc_TypeError, "%s has attributes other than the %zd named", type->tp_name,
                     n);
        return -1;
    }
    Py_XSETREF(m->cls, (PyTypeObject *)Py_NewRef(cls));
    m->n = n;
    memcpy(m->slots, slots, sizeof(slots[0]) * (size_t)n);
    return 0;
}

/* The slot of each name in a tuple of str, as maker_init's. */
static int
maker_init_names(Maker *m, PyObject *cls, PyObject *names)
{
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "at most %d fields", MAX_FIELDS);
        return -1;
    }
    const char *cnames[MAX_FIELDS + 1];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name) || (cnames[i] = PyUnicode_AsUTF8(name)) == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "field names must be str");
            return -1;
        }
    }
    cnames[n] = NULL;
    return maker_init(m, cls, cnames);
}

/* An instance with values[i] in slot i; steals the values, NULL ones included. */
static PyObject *
make(Maker *m, PyObject **values)
{
    PyObject *obj = NULL;
    for (Py_ssize_t i = 0; i < m->n; i++)
        if (values[i] == NULL)
            goto fail;
    obj = m->cls->tp_alloc(m->cls, 0);
    if (obj == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < m->n; i++)
        *(PyObject **)((char *)obj + m->slots[i]) = values[i];
    return obj;
fail:
    for (Py_ssize_t i = 0; i < m->n; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

/* Maker(cls, fields): a callable that makes cls(*values) by filling its
 * slots, for the events built for every record (tracer/core/build.py):
 * a dataclass __init__ of a dozen fields cost ~0.3 us. */
typedef struct {
    PyObject_HEAD
    Maker maker;
    vectorcallfunc vectorcall;
} MakerObject;

static int
MakerObject_init(MakerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cls", "fields", NULL};
    PyObject *cls, *fields;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!", kwlist, &cls, &PyTuple_Type, &fields))
        return -1;
    /* A call in progress reads the fields it was made with. */
    if (self->maker.cls != NULL) {
        PyErr_SetString(PyExc_TypeError, "Maker is already initialized");
        return -1;
    }
    return maker_init_names(&self->maker, cls, fields);
}

static PyObject *
MakerObject_call(MakerObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (self->maker.cls == NULL)
        return PyErr_Format(PyExc_TypeError, "Maker not initialized");
    if (n != self->maker.n || (kwnames != NULL && PyTuple_GET_SIZE(kwnames)))
        return PyErr_Format(PyExc_TypeError, "%s takes %zd positional values, %zd given",
                            self->maker.cls->tp_name, self->maker.n, n);
    PyObject *values[MAX_FIELDS];
    for (Py_ssize_t i = 0; i < n; i++)
        values[i] = Py_NewRef(args[i]);
    return make(&self->maker, values);
}

static void
MakerObject_dealloc(MakerObject *self)
{
    Py_XDECREF(self->maker.cls);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
MakerObject_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    MakerObject *self = (MakerObject *)PyType_GenericNew(type, args, kwds);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)MakerObject_call;
    return (PyObject *)self;
}

static PyTypeObject MakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracer.core._wire.Maker",
    .tp_doc = "Maker(cls, fields): makes cls(*values) by filling its slots, named by fields.",
    .tp_basicsize = sizeof(MakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(MakerObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = MakerObject_new,
    .tp_init = (initproc)MakerObject_init,
    .tp_dealloc = (destructor)MakerObject_dealloc,
};

typedef struct {
    PyObject_HEAD
    Maker task, file_open, connect;
    PyObject *verdict_cls;
    PyObject *verdicts; /* dict: the 8 wire bytes as an int -> Verdict */
    PyObject *wire_error;
} Decoder;

static int
Decoder_init(Decoder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"task", "file_open", "connect", "verdict", "wire_error", NULL};
    PyObject *task, *file_open, *connect, *verdict, *wire_error;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO", kwlist, &task, &file_open, &connect,
                                     &verdict, &wire_error))
        return -1;
    if (self->verdicts != NULL) {
        PyErr_SetString(PyExc_TypeError, "Decoder is already initialized");
        return -1;
    }
    /* Set up aside, kept only whole: a Decoder is initialized or not at all. */
    Maker t = {0}, f = {0}, c = {0};
    PyObject *verdicts = NULL;
    if (maker_init(&t, task, task_fields) < 0 || maker_init(&f, file_open, file_open_fields) < 0 ||
        maker_init(&c, connect, connect_fields) < 0 || (verdicts = PyDict_New()) == NULL) {
        Py_XDECREF(t.cls);
        Py_XDECREF(f.cls);
        Py_XDECREF(c.cls);
        return -1;
    }
    self->task = t;
    self->file_open = f;
    self->connect = c;
    self->verdicts = verdicts;
    self->verdict_cls = Py_NewRef(verdict);
    self->wire_error = Py_NewRef(wire_error);
    return 0;
}

static int
Decoder_ready(Decoder *self)
{
    if (self->verdicts != NULL)
        return 0;
    PyErr_SetString(PyExc_TypeError, "Decoder is not initialized");
    return -1;
}

static void
Decoder_dealloc(Decoder *self)
{
    Py_XDECREF(self->task.cls);
    Py_XDECREF(self->file_open.cls);
    Py_XDECREF(self->connect.cls);
    Py_XDECREF(self->verdict_cls);
    Py_XDECREF(self->verdicts);
    Py_XDECREF(self->wire_error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A record's values are made in one initializer; once one failed (MemoryError),
 * the others are not made: the C API is not called with an exception set. */
#define OK(value) (PyErr_Occurred() ? NULL : (value))

static PyObject *
task_of(Decoder *self, const struct tr_task *t)
{
    PyObject *v[] = {
        OK(PyLong_FromUnsignedLongLong(t->ktime)),
        OK(PyLong_FromUnsignedLongLong(t->start_boottime)),
        OK(PyLong_FromUnsignedLongLong(t->cgroup_id)),
        OK(PyLong_FromUnsignedLong(t->tgid)),
        OK(PyLong_FromUnsignedLong(t->tid)),
        OK(PyLong_FromUnsignedLong(t->ppid)),
        OK(PyLong_FromUnsignedLong(t->uid)),
        OK(PyLong_FromUnsignedLong(t->euid)),
        OK(PyLong_FromUnsignedLong(t->gid)),
        OK(PyLong_FromUnsignedLong(t->egid)),
        OK(t->auid == AUID_UNSET ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(t->auid)),
        OK(PyBytes_FromStringAndSize(t->comm, (Py_ssize_t)strnlen(t->comm, TR_COMM_LEN))),
        OK(PyLong_FromUnsignedLong(t->flags)),
    };
    return make(&self->task, v);
}

/* The shared Verdict of the record's rule: few rules exist, so few verdicts. */
static PyObject *
verdict_of(Decoder *self, const struct tr_verdict *w)
{
    unsigned long long raw;
    memcpy(&raw, w, sizeof raw);
    PyObject *key = PyLong_FromUnsignedLongLong(raw);
    if (key == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(self->verdicts, key); /* borrowed */
    if (v != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        return Py_XNewRef(v);
    }
    if (PyDict_GET_SIZE(self->verdicts) >= VERDICTS_MAX)
        PyDict_Clear(self->verdicts);
    v = PyObject_CallFunction(self->verdict_cls, "kkk", (unsigned long)w->policy_id,
                              (unsigned long)w->rule, (unsigned long)w->action);
    if (v != NULL && PyDict_SetItem(self->verdicts, key, v) < 0)
        Py_CLEAR(v);
    Py_DECREF(key);
    return v;
}

static PyObject *
wire_error(Decoder *self, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    PyObject *msg = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (msg != NULL) {
        PyErr_SetObject(self->wire_error, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

static PyObject *
file_open_of(Decoder *self, const char *buf, Py_ssize_t size)
{
    if ((size_t)size < FILE_OPEN_FIXED)
        return wire_error(self, "file_open record of %zd bytes is too short", size);
    struct tr_file_open r; /* its fixed part: the strings are read from buf */
    memcpy(&r, buf, FILE_OPEN_FIXED);
    Py_ssize_t end = (Py_ssize_t)FILE_OPEN_FIXED + r.path_len + r.source_len;
    if (end > size)
        return wire_error(self, "file_open strings overrun the record (%zd > %zd)", end, size);
    const char *path = buf + FILE_OPEN_FIXED;
    PyObject *v[] = {
        OK(task_of(self, &r.task)),
        OK(verdict_of(self, &r.verdict)),
        OK(PyLong_FromLongLong(r.ret)),
        OK(PyLong_FromUnsignedLong(r.open_flags)),
        OK(PyLong_FromUnsignedLong(r.mode)),
        OK(PyLong_FromUnsignedLong(r.flags)),
        OK(PyLong_FromUnsignedLong(r.hook)),
        OK(PyBytes_FromStringAndSize(path, r.path_len)),
        OK(PyLong_FromUnsignedLong(r.op)),
        OK(PyBytes_FromStringAndSize(path + r.path_len, r.source_len)),
    };
    return make(&self->file_open, v);
}

static PyObject *
connect_of(Decoder *self, const char *buf, Py_ssize_t size)
{
    if ((size_t)size < CONNECT_FIXED)
        return wire_error(self, "connect record of %zd bytes is too short", size);
    struct tr_connect r;
    memcpy(&r, buf, CONNECT_FIXED);
    Py_ssize_t plen = r.path_len < sizeof r.unix_path ? r.path_len : sizeof r.unix_path;
    PyObject *v[] = {
        OK(task_of(self, &r.task)),
        OK(verdict_of(self, &r.verdict)),
        OK(PyLong_FromLongLong(r.ret)),
        OK(PyLong_FromUnsignedLong(r.family)),
        OK(PyLong_FromUnsignedLong(r.protocol)),
        OK(PyLong_FromUnsignedLong(r.sock_type)),
        OK(PyLong_FromUnsignedLong(r.hook)),
        OK(PyLong_FromUnsignedLong(r.dport)),
        OK(PyLong_FromUnsignedLong(r.sport)),
        OK(PyBytes_FromStringAndSize((const char *)r.daddr, sizeof r.daddr)),
        OK(PyBytes_FromStringAndSize((const char *)r.saddr, sizeof r.saddr)),
        OK(PyBytes_FromStringAndSize(r.unix_path, plen)),
        OK(PyLong_FromUnsignedLong(r.via)),
        OK(PyLong_FromUnsignedLong(r.flags)),
    };
    return make(&self->connect, v);
}

static PyObject *
Decoder_decode(Decoder *self, PyObject *arg)
{
    Py_buffer view;
    if (Decoder_ready(self) < 0 || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *buf = view.buf;
    PyObject *rec = Py_None;
    struct tr_hdr hdr;
    if (view.len >= (Py_ssize_t)sizeof hdr) {
        memcpy(&hdr, buf, sizeof hdr);
        if (hdr.size <= (size_t)view.len) {
            if (hdr.kind == TR_KIND_FILE_OPEN)
                rec = file_open_of(self, buf, hdr.size);
            else if (hdr.kind == TR_KIND_CONNECT)
                rec = connect_of(self, buf, hdr.size);
        }
    }
    PyBuffer_Release(&view);
    return rec == Py_None ? Py_NewRef(Py_None) : rec;
}

static PyObject *
Decoder_verdict(Decoder *self, PyObject *arg)
{
    Py_buffer view;
    if (Decoder_ready(self) < 0 || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *v;
    if (view.len < (Py_ssize_t)(VERDICT_OFFSET + sizeof(struct tr_verdict))) {
        v = wire_error(self, "record of %zd bytes has no verdict", view.len);
    } else {
        struct tr_verdict w;
        memcpy(&w, (const char *)view.buf + VERDICT_OFFSET, sizeof w);
        v = verdict_of(self, &w);
    }
    PyBuffer_Release(&view);
    return v;
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_O,
     "decode(raw) -> record or None: a file_open or connect record; None for the other kinds "
     "and for a header decode.py refuses."},
    {"verdict", (PyCFunction)Decoder_verdict, METH_O,
     "verdict(raw) -> Verdict: the shared Verdict of an exec, file_open, connect... record."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracer.core._wire.Decoder",
    .tp_doc = "Decoder(task, file_open, connect, verdict, wire_error): the classes it makes.",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wire", "file_open and connect records decoded in C; objects made slot by slot.", 0, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    if (PyType_Ready(&DecoderType) < 0 || PyType_Ready(&MakerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0 ||
        PyModule_AddObjectRef(m, "Maker", (PyObject *)&MakerType) < 0 ||
        PyModule_AddIntConstant(m, "FILE_PATH_OFFSET", (long)FILE_OPEN_FIXED) < 0 ||
        PyModule_AddIntConstant(m, "CONNECT_SIZE", (long)CONNECT_FIXED) < 0 ||
        PyModule_AddIntConstant(m, "VERDICT_OFFSET", (long)VERDICT_OFFSET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
