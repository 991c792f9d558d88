/* tracer.core.clock.rfc3339 in C: a time stamp is made for every event
 * and every process a line names, and in Python (divmod, a cached
 * strftime, an f-string) it cost ~0.7 us. The format is rfc3339.h's. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "rfc3339.h"

static PyObject *
rfc3339(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyLong_Check(arg))
        return PyErr_Format(PyExc_TypeError, "rfc3339() takes an int, not %.100s",
                            Py_TYPE(arg)->tp_name);
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    char text[TR_RFC3339_MAX];
    int n = tr_rfc3339((int64_t)ns, text);
    if (n < 0)
        return PyErr_Format(PyExc_OverflowError, "time %lld ns is out of range", ns);
    return PyUnicode_DecodeASCII(text, n, NULL);
}

static PyMethodDef methods[] = {
    {"rfc3339", rfc3339, METH_O,
     "rfc3339(ns) -> str: UTC, exact to the nanosecond, 0, 3, 6 or 9 fractional digits."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clock", "RFC 3339 time stamps (rfc3339.h).", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__clock(void)
{
    return PyModule_Create(&module);
}
