/* The ring buffer's sample callback in C: each record becomes one bytes
 * object appended to a list, with no Python frame per record.
 *
 * libbpf calls the callback once per record from ring_buffer__consume().
 * Through a ctypes callback that cost a thunk, an argument tuple, a bound
 * method call and a ctypes.string_at() per record (bench/pipeline_cost.py
 * --ring): more than the record's decoding. tracer/core/bpf.py calls
 * ring_buffer__consume() through a ctypes.PyDLL, so the GIL is held for
 * the whole call and this callback may use the C API directly.
 *
 * A Batch owns the list records are appended to; its `context` is the
 * address libbpf passes back to the callback (ring_buffer__new's ctx).
 * The Batch must outlive the ring_buffer manager that holds its address.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *records; /* list of bytes, replaced by take() */
    Py_ssize_t limit;  /* records after which the callback stops the consume loop; 0: none */
} Batch;

/* What the callback returns to stop ring_buffer__consume() at a full batch;
 * libbpf passes it through as the call's result (tracer/core/bpf.py). */
#define BATCH_FULL (-ENOSPC)

static int
on_sample(void *ctx, void *data, size_t size)
{
    Batch *b = (Batch *)ctx;
    PyObject *rec = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)size);
    if (rec == NULL)
        return -1; /* the MemoryError stays set: ctypes raises it when the call returns */
    int failed = PyList_Append(b->records, rec);
    Py_DECREF(rec);
    if (failed)
        return -1;
    return b->limit > 0 && PyList_GET_SIZE(b->records) >= b->limit ? BATCH_FULL : 0;
}

static int
Batch_init(Batch *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"limit", NULL};
    Py_ssize_t limit = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", kwlist, &limit))
        return -1;
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be zero or more");
        return -1;
    }
    PyObject *records = PyList_New(0);
    if (records == NULL)
        return -1;
    Py_XSETREF(self->records, records);
    self->limit = limit;
    return 0;
}

static void
Batch_dealloc(Batch *self)
{
    Py_XDECREF(self->records);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Batch_take(Batch *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *out = self->records;
    self->records = fresh;
    return out;
}

static PyObject *
Batch_len(Batch *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(PyList_GET_SIZE(self->records));
}

static PyObject *
Batch_context(Batch *self, void *Py_UNUSED(closure))
{
    return PyLong_FromVoidPtr(self);
}

static PyMethodDef Batch_methods[] = {
    {"take", (PyCFunction)Batch_take, METH_NOARGS,
     "The records appended since the last take(), oldest first; the batch starts empty."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"pending", (getter)Batch_len, NULL, "records appended and not yet taken", NULL},
    {"context", (getter)Batch_context, NULL,
     "the address to give ring_buffer__new/add as ctx, with CALLBACK", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Batch_members[] = {
    {"limit", T_PYSSIZET, offsetof(Batch, limit), 0,
     "records after which the callback stops the consume loop (0: no limit)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracer.core._ringsink.Batch",
    .tp_doc = "Records of one ring (or several), appended by CALLBACK.",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
    .tp_members = Batch_members,
};

static struct PyModuleDef ringsink_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tracer.core._ringsink",
    .m_doc = "The BPF ring buffer's sample callback, in C (see _ringsink.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__ringsink(void)
{
    if (PyType_Ready(&BatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&ringsink_module);
    if (m == NULL)
        return NULL;
    PyObject *callback = PyLong_FromVoidPtr((void *)on_sample);
    if (callback == NULL || PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) < 0
        || PyModule_AddObjectRef(m, "CALLBACK", callback) < 0
        || PyModule_AddIntConstant(m, "BATCH_FULL", BATCH_FULL) < 0) {
        Py_XDECREF(callback);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(callback);
    return m;
}
