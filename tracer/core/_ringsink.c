/* The reader of a BPF ring buffer map, in C: each record becomes one bytes
 * object appended to a list, with no Python frame per record.
 *
 * It replaces libbpf's ring_buffer__consume() for one reason: memory.
 * libbpf maps a ring's data pages twice in a row, so that a record that
 * wraps past the end reads as one piece, and the kernel inserts every page
 * at mmap time (remap_vmalloc_range), so VmRSS counts each ring twice. A
 * record is copied into a bytes object anyway: here the data is mapped
 * once, and a record that wraps is copied in two pieces.
 *
 * The protocol is libbpf's (ringbuf.c, ringbuf_process_ring), kept exact:
 * positions are read with acquire loads; a header's length word is read
 * with an acquire load, its busy bit ends the pass (a record reserved and
 * not yet committed holds back every later one), its discard bit skips the
 * record; a record takes its 8-byte header plus its length, rounded up to
 * 8 bytes; the consumer position is stored (release) after every record, so
 * the kernel may reuse its space at once; after reaching the producer
 * position the pass repeats while it found records.
 *
 * The GIL is held for the whole call (it is a C method), so close() cannot
 * unmap the ring under a running consume().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* uapi/linux/bpf.h */
#define RINGBUF_BUSY_BIT (1U << 31)
#define RINGBUF_DISCARD_BIT (1U << 30)
#define RINGBUF_HDR_SZ 8U

typedef struct {
    PyObject_HEAD
    uint64_t *consumer;      /* the consumer page, mapped writable; NULL once closed */
    const uint64_t *producer; /* the producer page, the data right after it: read-only */
    const unsigned char *data;
    size_t size; /* bytes of data, a power of two */
    size_t page;
} Ring;

static void
Ring_unmap(Ring *self)
{
    if (self->consumer != NULL)
        munmap(self->consumer, self->page);
    if (self->producer != NULL)
        munmap((void *)self->producer, self->page + self->size);
    self->consumer = NULL;
    self->producer = NULL;
    self->data = NULL;
}

static int
Ring_init(Ring *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "size", NULL};
    int fd;
    Py_ssize_t size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "in", kwlist, &fd, &size))
        return -1;
    Ring_unmap(self);
    self->page = (size_t)sysconf(_SC_PAGESIZE);
    if (size <= 0 || (size & (size - 1)) || (size_t)size % self->page) {
        PyErr_Format(PyExc_ValueError,
                     "ring size %zd is not a power of two and a multiple of the page size", size);
        return -1;
    }
    self->size = (size_t)size;
    void *consumer = mmap(NULL, self->page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (consumer == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->consumer = consumer;
    /* Once, not twice: the kernel allows mapping a part of the range. */
    void *producer =
        mmap(NULL, self->page + self->size, PROT_READ, MAP_SHARED, fd, (off_t)self->page);
    if (producer == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        Ring_unmap(self);
        return -1;
    }
    self->producer = producer;
    self->data = (const unsigned char *)producer + self->page;
    return 0;
}

static void
Ring_dealloc(Ring *self)
{
    Ring_unmap(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Ring_open(Ring *self)
{
    if (self->consumer != NULL)
        return 1;
    PyErr_SetString(PyExc_ValueError, "the ring is closed");
    return 0;
}

/* The record's `len` bytes after the header at `pos`, from one or two pieces. */
static PyObject *
Ring_copy(Ring *self, uint64_t pos, size_t len)
{
    size_t mask = self->size - 1;
    size_t start = (size_t)(pos + RINGBUF_HDR_SZ) & mask;
    size_t first = self->size - start;
    if (len <= first)
        return PyBytes_FromStringAndSize((const char *)self->data + start, (Py_ssize_t)len);
    PyObject *rec = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (rec == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(rec);
    memcpy(out, self->data + start, first);
    memcpy(out + first, self->data, len - first);
    return rec;
}

static PyObject *
Ring_consume(Ring *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"into", "limit", NULL};
    PyObject *into;
    Py_ssize_t limit = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|n", kwlist, &PyList_Type, &into, &limit))
        return NULL;
    if (!Ring_open(self))
        return NULL;
    size_t mask = self->size - 1;
    Py_ssize_t taken = 0;
    uint64_t cons = __atomic_load_n(self->consumer, __ATOMIC_ACQUIRE);
    int found;
    do {
        found = 0;
        uint64_t prod = __atomic_load_n(self->producer, __ATOMIC_ACQUIRE);
        while (cons < prod) {
            const uint32_t *hdr = (const uint32_t *)(self->data + ((size_t)cons & mask));
            uint32_t word = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
            if (word & RINGBUF_BUSY_BIT)
                goto done;
            found = 1;
            size_t len = word & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);
            /* The kernel never reserves this much (its bound is the size
             * less one); reading it would run past the single mapping. */
            if (len + RINGBUF_HDR_SZ > self->size) {
                PyErr_Format(PyExc_OSError, "ring record of %zu bytes in a ring of %zu", len,
                             self->size);
                return NULL;
            }
            if (!(word & RINGBUF_DISCARD_BIT)) {
                PyObject *rec = Ring_copy(self, cons, len);
                /* On failure the record stays in the ring for the next call,
                 * and those taken before it stay in `into`. */
                if (rec == NULL)
                    return NULL;
                int failed = PyList_Append(into, rec);
                Py_DECREF(rec);
                if (failed)
                    return NULL;
                taken++;
            }
            cons += (len + RINGBUF_HDR_SZ + 7) & ~(size_t)7;
            __atomic_store_n(self->consumer, cons, __ATOMIC_RELEASE);
            if (limit > 0 && taken >= limit)
                goto done;
        }
    } while (found);
done:
    return PyLong_FromSsize_t(taken);
}

static PyObject *
Ring_used(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (self->consumer == NULL)
        return PyLong_FromLong(0);
    uint64_t cons = __atomic_load_n(self->consumer, __ATOMIC_ACQUIRE);
    uint64_t prod = __atomic_load_n(self->producer, __ATOMIC_ACQUIRE);
    uint64_t used = prod > cons ? prod - cons : 0;
    return PyLong_FromUnsignedLongLong(used < self->size ? used : self->size);
}

static PyObject *
Ring_close(Ring *self, PyObject *Py_UNUSED(ignored))
{
    Ring_unmap(self);
    Py_RETURN_NONE;
}

static PyMethodDef Ring_methods[] = {
    {"consume", (PyCFunction)(void (*)(void))Ring_consume, METH_VARARGS | METH_KEYWORDS,
     "consume(into, limit=0): append the committed records to the list `into`, oldest first,\n"
     "at most `limit` of them (0: all); the number appended."},
    {"used", (PyCFunction)Ring_used, METH_NOARGS,
     "Bytes written and not yet consumed, headers included (0 once closed)."},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "Unmap the ring; consume() then raises."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracer.core._ringsink.Ring",
    .tp_doc = "Ring(fd, size): the BPF ring buffer map `fd` of `size` data bytes, mapped once.",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
};

static struct PyModuleDef ringsink_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tracer.core._ringsink",
    .m_doc = "The BPF ring buffer's reader, in C (see _ringsink.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__ringsink(void)
{
    if (PyType_Ready(&RingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&ringsink_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
