/* The JSON line of the most frequent events (file_open, connect) in one C
 * call: `{"type":…,"time":…` + the process side (cached bytes, made by
 * export/jsonl.py) + the details + the policy (cached bytes) + "}\n".
 *
 * Built in Python from parts, a posted open's line cost ~3.7 us: the time
 * stamp, a details dict and its orjson dump, a join. A Shape knows one
 * event type: its name, the attribute holding its details, and the details'
 * fields in schema order, each either always written or left out when None
 * (export/jsonl.py FILE_FIELDS, CONNECT_FIELDS: the same tuples make
 * details_dict, so the two cannot disagree on a field).
 *
 * The output is byte for byte orjson's: strings escape `"`, `\` and the
 * control characters below 0x20 (\b \t \n \f \r, else \u00XX, lowercase
 * hex), everything else is raw UTF-8; a str with a lone surrogate raises
 * TypeError as orjson does; ints outside 64 bits too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#include "../tracer/core/rfc3339.h"

/* Room grows in a buffer on the stack, then on the heap (a path of 4 KiB
 * of control characters escapes to 24 KiB). */
typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char stack[8192];
} Buf;

static void
buf_init(Buf *b)
{
    b->p = b->stack;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof b->stack;
}

static void
buf_free(Buf *b)
{
    if (b->p != b->stack)
        PyMem_Free(b->p);
}

static int
buf_reserve(Buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap;
    while (cap < b->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Malloc((size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(p, b->p, (size_t)b->len);
    buf_free(b);
    b->p = p;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

/* 0: copied as is; 'u': \u00XX; else the letter after the backslash. */
static const char escapes[256] = {
    ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\f'] = 'f', ['\r'] = 'r',
    [0] = 'u', [1] = 'u', [2] = 'u', [3] = 'u', [4] = 'u', [5] = 'u', [6] = 'u', [7] = 'u',
    [11] = 'u', [14] = 'u', [15] = 'u', [16] = 'u', [17] = 'u', [18] = 'u', [19] = 'u',
    [20] = 'u', [21] = 'u', [22] = 'u', [23] = 'u', [24] = 'u', [25] = 'u', [26] = 'u',
    [27] = 'u', [28] = 'u', [29] = 'u', [30] = 'u', [31] = 'u',
    ['"'] = '"', ['\\'] = '\\',
};

static int
put_str(Buf *b, PyObject *s)
{
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) {
        /* orjson's error for a lone surrogate; a MemoryError stays one. */
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "str is not valid UTF-8: surrogates not allowed");
        }
        return -1;
    }
    if (buf_reserve(b, 6 * n + 2) < 0)
        return -1;
    char *out = b->p + b->len;
    *out++ = '"';
    Py_ssize_t run = 0; /* start of the bytes not copied yet */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        char e = escapes[c];
        if (e == 0)
            continue;
        memcpy(out, u + run, (size_t)(i - run));
        out += i - run;
        run = i + 1;
        *out++ = '\\';
        *out++ = e;
        if (e == 'u') {
            static const char hex[] = "0123456789abcdef";
            *out++ = '0';
            *out++ = '0';
            *out++ = hex[c >> 4];
            *out++ = hex[c & 15];
        }
    }
    memcpy(out, u + run, (size_t)(n - run));
    out += n - run;
    *out++ = '"';
    b->len = out - b->p;
    return 0;
}

/* n's decimal digits, right-aligned in text[24]; returns where they start. */
static char *
decimal(char text[24], unsigned long long n)
{
    char *p = text + 24;
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return p;
}

static int
put_int(Buf *b, PyObject *v)
{
    char text[24];
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow == 0) {
        char *p = decimal(text, x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x);
        if (x < 0)
            *--p = '-';
        return buf_put(b, p, text + 24 - p);
    } else {
        unsigned long long u = overflow > 0 ? PyLong_AsUnsignedLongLong(v) : 0;
        if (overflow < 0 || (u == (unsigned long long)-1 && PyErr_Occurred())) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "Integer exceeds 64-bit range");
            return -1;
        }
        char *p = decimal(text, u);
        return buf_put(b, p, text + 24 - p);
    }
}

static int put_value(Buf *b, PyObject *v);

static int
put_array(Buf *b, PyObject *seq)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    if (buf_put(b, "[", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((i && buf_put(b, ",", 1) < 0) || put_value(b, items[i]) < 0)
            return -1;
    }
    return buf_put(b, "]", 1);
}

/* The JSON of the values details hold: str, int, bool, None, tuples and lists of them. */
static int
put_value(Buf *b, PyObject *v)
{
    if (PyUnicode_Check(v))
        return put_str(b, v);
    if (v == Py_True)
        return buf_put(b, "true", 4);
    if (v == Py_False)
        return buf_put(b, "false", 5);
    if (PyLong_Check(v))
        return put_int(b, v);
    if (v == Py_None)
        return buf_put(b, "null", 4);
    if (PyTuple_Check(v) || PyList_Check(v)) {
        if (Py_EnterRecursiveCall(" in a JSON line"))
            return -1;
        int r = put_array(b, v);
        Py_LeaveRecursiveCall();
        return r;
    }
    PyErr_Format(PyExc_TypeError, "Type is not JSON serializable: %.100s", Py_TYPE(v)->tp_name);
    return -1;
}

typedef struct {
    PyObject *name;   /* interned attribute name */
    PyObject *key;    /* bytes: `"name":` */
    int optional;     /* left out when None */
} Field;

/* put_details copies the slots of the fields into an array on the stack. */
#define MAX_FIELDS 64

typedef struct {
    PyObject_HEAD
    PyObject *attr; /* interned: the event's attribute holding the details */
    PyObject *head; /* bytes: {"type":"<type>","time":" */
    PyObject *mid;  /* bytes: ,"<type>": */
    Py_ssize_t nfields;
    Field *fields;
    /* The classes last seen, and where they keep the attributes read: a
     * line() started by the Python code a getattr runs may change them, so
     * they are copied at a line's start. */
    PyTypeObject *event_type, *details_type;
    Py_ssize_t time_slot, attr_slot, slots[MAX_FIELDS];
} Shape;

static PyObject *time_attr;

/* Where instances of a class with __slots__ keep an attribute, so that it
 * is read from the object itself: through the type's attribute lookup,
 * the fields' getattr were half of a line's C time. -1: not a plain slot
 * (then getattr). */
static Py_ssize_t
slot_of(PyTypeObject *type, PyObject *name)
{
    PyObject *d = _PyType_Lookup(type, name); /* borrowed */
    /* A descriptor taken from another class holds that class's offset:
     * getattr refuses it, as it must. */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        !PyType_IsSubtype(type, PyDescr_TYPE(d)))
        return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    return m->type == T_OBJECT_EX ? m->offset : -1;
}

static PyObject *
get(PyObject *obj, PyObject *name, Py_ssize_t slot)
{
    if (slot < 0)
        return PyObject_GetAttr(obj, name);
    PyObject *v = *(PyObject **)((char *)obj + slot);
    if (v == NULL)
        return PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%U'",
                            Py_TYPE(obj)->tp_name, name);
    return Py_NewRef(v);
}

static int
plain_name(PyObject *s)
{
    /* Names are written unescaped: only [a-z0-9_] are let in. */
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = u[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            PyErr_Format(PyExc_ValueError, "%R: a name must be [a-z0-9_]", s);
            return -1;
        }
    }
    return n > 0 ? 0 : (PyErr_SetString(PyExc_ValueError, "empty name"), -1);
}

static void
fields_free(Field *fields, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; fields != NULL && i < n; i++) {
        Py_XDECREF(fields[i].name);
        Py_XDECREF(fields[i].key);
    }
    PyMem_Free(fields);
}

/* The Field of each (name, optional); NULL on error. */
static Field *
fields_of(PyObject *fields)
{
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "at most %d fields", MAX_FIELDS);
        return NULL;
    }
    Field *out = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Field));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name;
        int optional;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "Up;a field is (name, optional)",
                              &name, &optional) ||
            plain_name(name) < 0) {
            fields_free(out, n);
            return NULL;
        }
        Field *f = &out[i];
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        f->name = name;
        f->key = PyBytes_FromFormat("\"%s\":", PyUnicode_AsUTF8(name));
        f->optional = optional;
        if (f->key == NULL) {
            fields_free(out, n);
            return NULL;
        }
    }
    return out;
}

static int
Shape_init(Shape *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"type", "attr", "fields", NULL};
    PyObject *type, *attr, *fields;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UUO!", kwlist, &type, &attr, &PyTuple_Type,
                                     &fields))
        return -1;
    /* A line in progress reads the fields it started with. */
    if (self->fields != NULL) {
        PyErr_SetString(PyExc_TypeError, "Shape is already initialized");
        return -1;
    }
    if (plain_name(type) < 0 || plain_name(attr) < 0)
        return -1;
    /* Set up aside, kept only whole: a Shape is initialized or not at all. */
    PyObject *head = PyBytes_FromFormat("{\"type\":\"%s\",\"time\":\"", PyUnicode_AsUTF8(type));
    PyObject *mid = PyBytes_FromFormat(",\"%s\":", PyUnicode_AsUTF8(type));
    Field *f = head != NULL && mid != NULL ? fields_of(fields) : NULL;
    if (f == NULL) {
        Py_XDECREF(head);
        Py_XDECREF(mid);
        return -1;
    }
    Py_INCREF(attr);
    PyUnicode_InternInPlace(&attr);
    self->attr = attr;
    self->head = head;
    self->mid = mid;
    self->fields = f;
    self->nfields = PyTuple_GET_SIZE(fields);
    return 0;
}

static void
Shape_dealloc(Shape *self)
{
    fields_free(self->fields, self->nfields);
    Py_XDECREF(self->attr);
    Py_XDECREF(self->head);
    Py_XDECREF(self->mid);
    Py_XDECREF(self->event_type);
    Py_XDECREF(self->details_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* `{`, the fields of obj, `}` */
static int
put_details(Shape *self, Buf *b, PyObject *obj)
{
    if (Py_TYPE(obj) != self->details_type) {
        Py_XSETREF(self->details_type, (PyTypeObject *)Py_NewRef(Py_TYPE(obj)));
        for (Py_ssize_t i = 0; i < self->nfields; i++)
            self->slots[i] = slot_of(Py_TYPE(obj), self->fields[i].name);
    }
    Py_ssize_t slots[MAX_FIELDS];
    memcpy(slots, self->slots, sizeof(slots[0]) * (size_t)self->nfields);
    if (buf_put(b, "{", 1) < 0)
        return -1;
    int first = 1;
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        Field *f = &self->fields[i];
        PyObject *v = get(obj, f->name, slots[i]);
        if (v == NULL)
            return -1;
        if (v == Py_None && f->optional) {
            Py_DECREF(v);
            continue;
        }
        const char *key = PyBytes_AS_STRING(f->key);
        Py_ssize_t klen = PyBytes_GET_SIZE(f->key);
        int r = first ? 0 : buf_put(b, ",", 1);
        if (r == 0)
            r = buf_put(b, key, klen);
        if (r == 0)
            r = put_value(b, v);
        Py_DECREF(v);
        if (r < 0)
            return -1;
        first = 0;
    }
    return buf_put(b, "}", 1);
}

static int
bytes_arg(PyObject *v, const char *what)
{
    if (PyBytes_CheckExact(v))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s must be bytes, not %.100s", what, Py_TYPE(v)->tp_name);
    return -1;
}

static PyObject *
Shape_line(Shape *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "line(event, context, policy) takes three arguments");
        return NULL;
    }
    PyObject *ev = args[0], *context = args[1], *policy = args[2];
    if (self->fields == NULL) {
        PyErr_SetString(PyExc_TypeError, "Shape is not initialized");
        return NULL;
    }
    if (bytes_arg(context, "context") < 0 || bytes_arg(policy, "policy") < 0)
        return NULL;
    char stamp[TR_RFC3339_MAX];
    if (Py_TYPE(ev) != self->event_type) {
        Py_XSETREF(self->event_type, (PyTypeObject *)Py_NewRef(Py_TYPE(ev)));
        self->time_slot = slot_of(Py_TYPE(ev), time_attr);
        self->attr_slot = slot_of(Py_TYPE(ev), self->attr);
    }
    Py_ssize_t attr_slot = self->attr_slot;
    PyObject *t = get(ev, time_attr, self->time_slot);
    if (t == NULL)
        return NULL;
    long long ns = PyLong_AsLongLong(t);
    Py_DECREF(t);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    int slen = tr_rfc3339((int64_t)ns, stamp);
    if (slen < 0)
        return PyErr_Format(PyExc_OverflowError, "time %lld ns is out of range", ns);
    PyObject *obj = get(ev, self->attr, attr_slot);
    if (obj == NULL)
        return NULL;
    Buf b;
    buf_init(&b);
    int r = put_details(self, &b, obj);
    Py_DECREF(obj);
    if (r < 0) {
        buf_free(&b);
        return NULL;
    }
    Py_ssize_t hlen = PyBytes_GET_SIZE(self->head), clen = PyBytes_GET_SIZE(context);
    Py_ssize_t mlen = PyBytes_GET_SIZE(self->mid), plen = PyBytes_GET_SIZE(policy);
    PyObject *line =
        PyBytes_FromStringAndSize(NULL, hlen + slen + 1 + clen + mlen + b.len + plen + 2);
    if (line != NULL) {
        char *p = PyBytes_AS_STRING(line);
        memcpy(p, PyBytes_AS_STRING(self->head), (size_t)hlen);
        p += hlen;
        memcpy(p, stamp, (size_t)slen);
        p += slen;
        *p++ = '"';
        memcpy(p, PyBytes_AS_STRING(context), (size_t)clen);
        p += clen;
        memcpy(p, PyBytes_AS_STRING(self->mid), (size_t)mlen);
        p += mlen;
        memcpy(p, b.p, (size_t)b.len);
        p += b.len;
        memcpy(p, PyBytes_AS_STRING(policy), (size_t)plen);
        p += plen;
        *p++ = '}';
        *p = '\n';
    }
    buf_free(&b);
    return line;
}

static PyMethodDef Shape_methods[] = {
    {"line", (PyCFunction)(void (*)(void))Shape_line, METH_FASTCALL,
     "line(event, context, policy) -> bytes: the event's JSON line, newline included."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ShapeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "export._jsonline.Shape",
    .tp_doc = "Shape(type, attr, fields): how the JSON line of one event type is made.",
    .tp_basicsize = sizeof(Shape),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Shape_init,
    .tp_dealloc = (destructor)Shape_dealloc,
    .tp_methods = Shape_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonline", "JSON lines of file_open and connect events in C.", 0,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__jsonline(void)
{
    time_attr = PyUnicode_InternFromString("time");
    if (time_attr == NULL || PyType_Ready(&ShapeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Shape", (PyObject *)&ShapeType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
