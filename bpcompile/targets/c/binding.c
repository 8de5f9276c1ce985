/* bpc_binding: the C target's Python binding (carried by every generated loader,
   <name>_c.py, built once per build cache and shared by its modules).

   A call through ctypes costs 13-17 us before the C code starts (a small net at
   batch 1): a Python object per argument converted, the dict of params read key
   by key in Python, each gradient array allocated by a Python call.  An Entry
   does all of that in C, so that value_and_grad costs about 1.7 us more than its
   arithmetic:

       Entry(fn, kind, params, inputs, outputs, local, workspace, on_error)

         fn         the address of <module>_<fn>_packed (the entry point with its
                    arrays in one array of pointers)
         kind       0 predict, 1 loss, 2 value_and_grad
         params     ((key, typenum, shape), ...)       the params dict's arrays
         inputs     ((typenum, shape, read, classes), ...)
                                                       per-example shapes, in order;
                                                       read: may not be None; classes:
                                                       a label's class count, else 0
         outputs    ((key or None, typenum, batched, shape), ...)
                                                       predict's output, or the gradients
         local      the loader's threading.local: local.last is this thread's
                    workspace for its last batch size, (N, address, memory)
         workspace  workspace(N): makes local.last the workspace for N, returns it
         on_error   on_error(status): raises the loader's error for a status != 0

       entry(params, *inputs, check) -> predict: the output array; loss: L (a
                                 float); value_and_grad: (L, {key: gradient})

   An Entry takes only what it can pass as it is: C-contiguous, aligned, native
   arrays of the exact dtype and shape, every param present, every input the
   function reads given; with check set, also no ndarray subclass and every label
   in [0, classes): then every argument is one the loader's _check passes, and
   the call skips it.  For anything else it returns NotImplemented and the
   loader takes its general path (which converts what it may, and raises the
   error that names the argument otherwise): this file checks, it never decides
   what is an error.  The C function runs without the GIL, the param arrays held
   (another thread may replace them in the dict meanwhile).

   Built with the running Python's and NumPy's headers; the cache key names both
   versions. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#if NPY_ABI_VERSION < 0x02000000   /* NumPy 1.x's headers */
#define PyDataType_ELSIZE(descr) ((descr)->elsize)
#endif

#include <limits.h>
#include <stdint.h>
#include <math.h>

#define MAX_RANK 16         /* per slot; a spec's tensors have rank 4 at most */
#define STACK_ARRAYS 64     /* argument lists up to this long live on the stack */

typedef int (*packed_fn)(int, void*, void* const*);

typedef struct {
    PyObject* key;          /* params and gradients: their key in the dict */
    int typenum;
    int batched;            /* a leading axis of N before shape */
    int read;               /* inputs: must not be None */
    long classes;           /* a label input: its class count (else 0) */
    int ndim;
    npy_intp dims[MAX_RANK];
} Slot;

typedef struct {
    PyObject_HEAD
    packed_fn fn;
    int kind;
    Py_ssize_t n_params, n_inputs, n_outputs;
    Slot* slots;            /* params, then inputs, then outputs */
    PyObject* local;
    PyObject* workspace;
    PyObject* on_error;
} Entry;

enum { PREDICT = 0, LOSS = 1, VALUE_AND_GRAD = 2 };
enum { PARAMS, INPUTS, OUTPUTS };

static PyObject* last_name;   /* "last" */


/* ------------------------------------------------------------------------- */
/* Construction */

static int parse_shape(PyObject* shape, Slot* slot)
{
    Py_ssize_t i, n;
    if (!PyTuple_Check(shape) || (n = PyTuple_GET_SIZE(shape)) > MAX_RANK - 1) {
        PyErr_SetString(PyExc_ValueError, "bpc_binding: a shape must be a tuple of at most 15 ints");
        return -1;
    }
    slot->ndim = (int)n;
    for (i = 0; i < n; i++) {
        slot->dims[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (slot->dims[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static int parse_slots(PyObject* specs, int kind, Slot* slots, Py_ssize_t n)
{
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        PyObject* spec = PyTuple_GET_ITEM(specs, i);
        PyObject *key = Py_None, *shape;
        Slot* s = &slots[i];
        int ok;
        if (kind == PARAMS) {
            ok = PyArg_ParseTuple(spec, "OiO", &key, &s->typenum, &shape);
            s->read = 1;
        } else if (kind == INPUTS) {
            ok = PyArg_ParseTuple(spec, "iOpl", &s->typenum, &shape, &s->read, &s->classes);
            s->batched = 1;
        } else {
            ok = PyArg_ParseTuple(spec, "OipO", &key, &s->typenum, &s->batched, &shape);
        }
        if (!ok || parse_shape(shape, s) < 0) return -1;
        if (key != Py_None) {
            Py_INCREF(key);
            s->key = key;
        }
    }
    return 0;
}

static void Entry_dealloc(Entry* self)
{
    if (self->slots != NULL) {
        Py_ssize_t i, n = self->n_params + self->n_inputs + self->n_outputs;
        for (i = 0; i < n; i++) Py_XDECREF(self->slots[i].key);
        PyMem_Free(self->slots);
    }
    Py_XDECREF(self->local);
    Py_XDECREF(self->workspace);
    Py_XDECREF(self->on_error);
    Py_TYPE(self)->tp_free((PyObject*)self);
}

static int Entry_init(Entry* self, PyObject* args, PyObject* kwargs)
{
    PyObject *fn, *params, *inputs, *outputs, *local, *workspace, *on_error;
    Py_ssize_t n;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "bpc_binding.Entry takes no keyword arguments");
        return -1;
    }
    if (self->slots != NULL) {
        PyErr_SetString(PyExc_TypeError, "bpc_binding.Entry is initialised once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!iO!O!O!OOO", &PyLong_Type, &fn, &self->kind, &PyTuple_Type, &params,
                          &PyTuple_Type, &inputs, &PyTuple_Type, &outputs, &local, &workspace, &on_error))
        return -1;
    self->fn = (packed_fn)PyLong_AsVoidPtr(fn);
    if (self->fn == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bpc_binding.Entry: a NULL function");
        return -1;
    }
    if (self->kind < PREDICT || self->kind > VALUE_AND_GRAD) {
        PyErr_SetString(PyExc_ValueError, "bpc_binding.Entry: kind is 0, 1 or 2");
        return -1;
    }
    self->n_params = PyTuple_GET_SIZE(params);
    self->n_inputs = PyTuple_GET_SIZE(inputs);
    self->n_outputs = PyTuple_GET_SIZE(outputs);
    n = self->n_params + self->n_inputs + self->n_outputs;
    self->slots = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof(Slot));
    if (self->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (parse_slots(params, PARAMS, self->slots, self->n_params) < 0 ||
        parse_slots(inputs, INPUTS, self->slots + self->n_params, self->n_inputs) < 0 ||
        parse_slots(outputs, OUTPUTS, self->slots + self->n_params + self->n_inputs, self->n_outputs) < 0)
        return -1;
    Py_INCREF(local);
    self->local = local;
    Py_INCREF(workspace);
    self->workspace = workspace;
    Py_INCREF(on_error);
    self->on_error = on_error;
    return 0;
}


/* ------------------------------------------------------------------------- */
/* The call */

/* Whether a can be passed as it is for slot s at batch size N; with check, also
   whether it passes the loader's _check (a plain ndarray; labels in range). */
static int passable(PyObject* a, const Slot* s, npy_intp N, int check)
{
    PyArrayObject* arr = (PyArrayObject*)a;
    const npy_intp* dims;
    int i, lead = s->batched ? 1 : 0;
    if (!(check ? PyArray_CheckExact(a) : PyArray_Check(a)) || PyArray_TYPE(arr) != s->typenum ||
        !PyArray_ISNOTSWAPPED(arr) ||
        !PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr) || PyArray_NDIM(arr) != s->ndim + lead)
        return 0;
    dims = PyArray_DIMS(arr);
    if (lead && dims[0] != N) return 0;
    for (i = 0; i < s->ndim; i++)
        if (dims[lead + i] != s->dims[i]) return 0;
    if (check && s->classes > 0) {   /* int32 labels (the typenum says so) */
        const npy_int32* v = PyArray_DATA(arr);
        npy_intp j, n = PyArray_SIZE(arr);
        for (j = 0; j < n; j++)
            if (v[j] < 0 || v[j] >= s->classes) return 0;
    }
    return 1;
}

/* The dims of slot s at batch size N; returns the rank. */
static int slot_dims(const Slot* s, npy_intp N, npy_intp* dims)
{
    int i, lead = s->batched ? 1 : 0;
    dims[0] = N;
    for (i = 0; i < s->ndim; i++) dims[lead + i] = s->dims[i];
    return s->ndim + lead;
}

/* The bytes of slot s at batch size N, rounded up to a multiple of 64; -1 (an
   exception set) when its dtype is unknown. */
static npy_intp slot_bytes(const Slot* s, npy_intp N)
{
    npy_intp dims[MAX_RANK], bytes;
    int j, rank = slot_dims(s, N, dims);
    PyArray_Descr* descr = PyArray_DescrFromType(s->typenum);
    if (descr == NULL) return -1;
    bytes = PyDataType_ELSIZE(descr);
    Py_DECREF(descr);
    for (j = 0; j < rank; j++) bytes *= dims[j];
    return (bytes + 63) / 64 * 64;
}

/* Fresh arrays for the n slots s at batch size N, written to o[0..n): views of one
   block of memory (each at a 64-byte offset), so that a call allocates once.  A
   gradient per allocation made glibc's malloc give the memory back to the system
   after every call and fault it in again on the next (deep thin float64: 112-144
   page faults a call, about a quarter of its time); one block of that size is
   mapped once and then reused.  Each starts at a 64-byte boundary (a cache line,
   and the widest vector).  A view keeps the whole block alive. */
static int new_arrays(const Slot* s, Py_ssize_t n, npy_intp N, PyObject** o)
{
    npy_intp dims[MAX_RANK], total = 63, offset = 0;   /* 63: room to start at a 64-byte boundary */
    Py_ssize_t i;
    PyObject* block;
    char* base;
    for (i = 0; i < n; i++) {
        npy_intp bytes = slot_bytes(&s[i], N);
        if (bytes < 0) return -1;
        total += bytes;
    }
    block = PyArray_SimpleNew(1, &total, NPY_UINT8);
    if (block == NULL) return -1;
    base = PyArray_DATA((PyArrayObject*)block);
    base += (64 - (uintptr_t)base % 64) % 64;   /* malloc gives 16 */
    for (i = 0; i < n; i++) {
        int rank = slot_dims(&s[i], N, dims);
        PyArray_Descr* descr = PyArray_DescrFromType(s[i].typenum);   /* stolen below */
        if (descr == NULL) goto fail;
        o[i] = PyArray_NewFromDescr(&PyArray_Type, descr, rank, dims, NULL, base + offset, NPY_ARRAY_CARRAY, NULL);
        if (o[i] == NULL) goto fail;
        Py_INCREF(block);
        if (PyArray_SetBaseObject((PyArrayObject*)o[i], block) < 0) {
            Py_DECREF(o[i]);
            goto fail;
        }
        offset += slot_bytes(&s[i], N);
    }
    Py_DECREF(block);
    return 0;
fail:
    while (i-- > 0) Py_DECREF(o[i]);
    Py_DECREF(block);
    return -1;
}

/* This thread's workspace for batch size N: (N, address, memory), a new reference. */
static PyObject* workspace_for(Entry* self, npy_intp N)
{
    PyObject* last = PyObject_GetAttr(self->local, last_name);
    if (last != NULL && PyTuple_Check(last) && PyTuple_GET_SIZE(last) == 3 &&
        PyLong_AsSsize_t(PyTuple_GET_ITEM(last, 0)) == N)
        return last;
    Py_XDECREF(last);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return NULL;
        PyErr_Clear();
    }
    last = PyObject_CallFunction(self->workspace, "n", N);
    if (last != NULL && !(PyTuple_Check(last) && PyTuple_GET_SIZE(last) == 3)) {
        Py_DECREF(last);
        PyErr_SetString(PyExc_TypeError, "bpc_binding: workspace(N) must return (N, address, memory)");
        return NULL;
    }
    return last;
}

static PyObject* Entry_call(Entry* self, PyObject* args, PyObject* kwargs)
{
    void* stack_arrays[STACK_ARRAYS];
    PyObject* stack_held[STACK_ARRAYS];
    void** arrays = stack_arrays;
    PyObject** held = stack_held;    /* the params (held), then the outputs (made) */
    const Slot* in = self->slots + self->n_params;
    const Slot* out = in + self->n_inputs;
    Py_ssize_t i, n_held = 0, n_arrays, n_out_arrays, a_in, a_out;
    PyObject *params, *last = NULL, *result = NULL;
    npy_intp N = 1;
    void* workspace;
    double loss = NAN;
    int status, check;

    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "an Entry takes (params, *inputs, check), positionally");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 2 + self->n_inputs) {
        PyErr_Format(PyExc_TypeError, "an Entry takes params, %zd inputs and check, given %zd arguments",
                     self->n_inputs, PyTuple_GET_SIZE(args));
        return NULL;
    }
    check = PyObject_IsTrue(PyTuple_GET_ITEM(args, 1 + self->n_inputs));
    if (check < 0) return NULL;
    params = PyTuple_GET_ITEM(args, 0);
    if (!PyDict_Check(params)) Py_RETURN_NOTIMPLEMENTED;

    /* N: the first given input's leading axis (as the loader's general path) */
    for (i = 0; i < self->n_inputs; i++) {
        PyObject* a = PyTuple_GET_ITEM(args, 1 + i);
        if (a == Py_None) continue;
        if (!PyArray_Check(a) || PyArray_NDIM((PyArrayObject*)a) < 1) Py_RETURN_NOTIMPLEMENTED;
        N = PyArray_DIMS((PyArrayObject*)a)[0];
        break;
    }
    if (N < 1 || N > INT_MAX) Py_RETURN_NOTIMPLEMENTED;

    n_out_arrays = self->kind == PREDICT ? 1 : self->kind == LOSS ? 1 : 1 + self->n_outputs;
    n_arrays = self->n_params + self->n_inputs + n_out_arrays;
    if (n_arrays > STACK_ARRAYS) {
        arrays = PyMem_Malloc((size_t)n_arrays * sizeof(void*));
        held = PyMem_Malloc((size_t)(self->n_params + self->n_outputs + 1) * sizeof(PyObject*));
        if (arrays == NULL || held == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }

    for (i = 0; i < self->n_params; i++) {
        const Slot* s = &self->slots[i];
        PyObject* a = PyDict_GetItemWithError(params, s->key);   /* borrowed */
        if (a == NULL || !passable(a, s, N, check)) {
            if (!PyErr_Occurred()) result = Py_NewRef(Py_NotImplemented);
            goto done;
        }
        Py_INCREF(a);
        held[n_held++] = a;
        arrays[i] = PyArray_DATA((PyArrayObject*)a);
    }
    a_in = self->n_params;
    for (i = 0; i < self->n_inputs; i++) {
        PyObject* a = PyTuple_GET_ITEM(args, 1 + i);
        if (a == Py_None ? in[i].read : !passable(a, &in[i], N, check)) {
            result = Py_NewRef(Py_NotImplemented);
            goto done;
        }
        arrays[a_in + i] = a == Py_None ? NULL : PyArray_DATA((PyArrayObject*)a);
    }

    last = workspace_for(self, N);
    if (last == NULL) goto done;
    workspace = PyLong_AsVoidPtr(PyTuple_GET_ITEM(last, 1));
    if (workspace == NULL && PyErr_Occurred()) goto done;

    a_out = a_in + self->n_inputs;
    if (self->kind != PREDICT) arrays[a_out++] = &loss;
    if (self->kind != LOSS && self->n_outputs > 0) {
        if (new_arrays(out, self->n_outputs, N, held + n_held) < 0) goto done;
        for (i = 0; i < self->n_outputs; i++, n_held++)
            arrays[a_out++] = PyArray_DATA((PyArrayObject*)held[n_held]);
    }

    Py_BEGIN_ALLOW_THREADS
    status = self->fn((int)N, workspace, arrays);
    Py_END_ALLOW_THREADS

    if (status != 0) {
        PyObject* r = PyObject_CallFunction(self->on_error, "i", status);
        Py_XDECREF(r);
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "bpc_binding: the C function returned %d", status);
        goto done;
    }
    if (self->kind == PREDICT) {
        result = Py_NewRef(held[self->n_params]);
    } else if (self->kind == LOSS) {
        result = PyFloat_FromDouble(loss);
    } else {
        PyObject* grads = PyDict_New();
        if (grads == NULL) goto done;
        for (i = 0; i < self->n_outputs; i++) {
            if (PyDict_SetItem(grads, out[i].key, held[self->n_params + i]) < 0) {
                Py_DECREF(grads);
                goto done;
            }
        }
        result = Py_BuildValue("(dN)", loss, grads);
    }

done:
    for (i = 0; i < n_held; i++) Py_DECREF(held[i]);
    Py_XDECREF(last);
    if (arrays != stack_arrays) PyMem_Free(arrays);
    if (held != stack_held) PyMem_Free(held);
    return result;
}


/* ------------------------------------------------------------------------- */
/* The type and the module */

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bpc_binding.Entry",
    .tp_basicsize = sizeof(Entry),
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_call = (ternaryfunc)Entry_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An entry point of a generated C library, called from Python (see bpc_binding.c).",
    .tp_init = (initproc)Entry_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef binding_module = {
    PyModuleDef_HEAD_INIT, "bpc_binding", "The C target's Python binding (bpcompile).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_bpc_binding(void)
{
    PyObject* m;
    import_array();
    if (PyType_Ready(&EntryType) < 0) return NULL;
    last_name = PyUnicode_InternFromString("last");
    if (last_name == NULL) return NULL;
    m = PyModule_Create(&binding_module);
    if (m == NULL) return NULL;
    Py_INCREF(&EntryType);
    if (PyModule_AddObject(m, "Entry", (PyObject*)&EntryType) < 0) {
        Py_DECREF(&EntryType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
