"""Every naming convention of the generated code, in one place.

The lectures write ``a_bar`` for dL/da; generated code does the same.  Anonymous
values are ``t0, t1, ...``.  Spec names that would collide with any of these, or
with a reserved word of one of the targets, are rejected when the spec is read.

There is one reserved-word list per target (``RESERVED``): Python (the NumPy
module and the CUDA/C loaders), C (the C target and the host side of the .cu) and
CUDA.  A spec can be compiled for any target, so a name is checked against every
list, and the error says which target it collides with.
"""

from __future__ import annotations

import builtins
import keyword
import re
import sys

BAR_SUFFIX = "_bar"
TEMP_PREFIX = "t"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TEMP_NAME = re.compile(r"t[0-9]+\Z")


def bar(name: str) -> str:
    """The adjoint's name: ``bar("a") == "a_bar"`` (dL/da)."""
    return name + BAR_SUFFIX


def temp(k: int) -> str:
    return f"{TEMP_PREFIX}{k}"


def _words(text: str) -> frozenset:
    return frozenset(text.split())


# ---------------------------------------------------------------------------
# Python: the NumPy module and the loaders of the CUDA and C targets

# Names the generated Python modules (NumPy module, CUDA and C loaders) define or
# use themselves, at module level or beside the spec's names inside a function.
GENERATED_NAMES = _words("""
    np N rows ones params lr seed rng inputs grads state loss_value value
    momentum beta1 beta2 eps check CHECK
    NAME DTYPE PARAM_SHAPES INPUT_SHAPES LABEL_CLASSES WRT OUTPUT REDUCTION TRAINED
    GRAD_SHAPES OUTPUT_SHAPE SOURCE USES_CUBLAS KEEP_WORKSPACES CUDA_HOMES DEFAULT_CUDA_HOME
    CudaModuleError CModuleError OrderedDict Path binding BINDING_SOURCE
    init_params predict loss value_and_grad gradient sgd_step momentum_step adam_step
    L L_n L_bar
""")

# Modules the generated Python imports, or might (a name equal to one shadows it).
PYTHON_MODULES = _words("""
    numpy np math cmath json os sys ctypes hashlib pathlib subprocess tempfile importlib
    warnings atexit shlex shutil threading collections functools itertools operator
    typing types io re struct time random platform sysconfig cupy nvidia dask bpcompile
""")

PYTHON_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
PYTHON_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))

# ---------------------------------------------------------------------------
# C and C++ (the C target; the host side of the CUDA target is C++)

C_KEYWORDS = _words("""
    auto break case char const continue default do double else enum extern float for
    goto if inline int long register restrict return short signed sizeof static struct
    switch typedef union unsigned void volatile while bool true false
    alignas alignof asm catch class concept consteval constexpr constinit const_cast
    co_await co_return co_yield char8_t char16_t char32_t decltype delete dynamic_cast
    explicit export final friend import module mutable namespace new noexcept nullptr
    operator override private protected public reflexpr reinterpret_cast requires
    static_assert static_cast synchronized template this thread_local throw try typeid
    typename using virtual wchar_t
    and and_eq bitand bitor compl not not_eq or or_eq xor xor_eq
    main std
""")

# Macros of the C/C++ compilers and of the headers the generated code includes
# (math.h, stddef.h, stdlib.h, stdio.h, string.h; the emulation build adds
# ucontext.h).  A macro name anywhere in the source is replaced before the compiler
# sees it, so none of these can name anything.
C_MACROS = _words("""
    linux unix i386 i486 i586 i686 sun sparc mips vax pdp11 m68k mc68000 powerpc ppc
    NULL EOF BUFSIZ FILENAME_MAX FOPEN_MAX L_tmpnam L_ctermid L_cuserid P_tmpdir TMP_MAX
    SEEK_SET SEEK_CUR SEEK_END SEEK_DATA SEEK_HOLE RENAME_EXCHANGE RENAME_NOREPLACE
    RENAME_WHITEOUT stdin stdout stderr
    EXIT_FAILURE EXIT_SUCCESS RAND_MAX MB_CUR_MAX MB_LEN_MAX alloca strdupa strndupa
    WCONTINUED WEXITED WEXITSTATUS WIFCONTINUED WIFEXITED WIFSIGNALED WIFSTOPPED WNOHANG
    WNOWAIT WSTOPPED WSTOPSIG WTERMSIG WUNTRACED
    FD_CLR FD_ISSET FD_SET FD_SETSIZE FD_ZERO NFDBITS NGREG major minor makedev
    BIG_ENDIAN LITTLE_ENDIAN PDP_ENDIAN BYTE_ORDER
    be16toh be32toh be64toh htobe16 htobe32 htobe64 htole16 htole32 htole64
    le16toh le32toh le64toh
    HUGE_VAL HUGE_VALF HUGE_VALL INFINITY NAN MAXFLOAT SNAN SNANF SNANL
    MATH_ERRNO MATH_ERREXCEPT math_errhandling
    isnan isinf isfinite isnormal issubnormal iszero issignaling signbit fpclassify
    isgreater isgreaterequal isless islessequal islessgreater isunordered
    offsetof assert NDEBUG errno static_assert
    EDOM ERANGE EILSEQ EINVAL ENOMEM EPERM ENOENT EIO EAGAIN EBADF EACCES EEXIST EFAULT
    EBUSY ENOSPC EPIPE EINTR ECHILD ESRCH ENXIO E2BIG ENOEXEC ENOTDIR EISDIR ENFILE
    EMFILE ENOTTY EFBIG ESPIPE EROFS EMLINK EDEADLK ENOSYS ETIMEDOUT
    CHAR_BIT CHAR_MAX CHAR_MIN SCHAR_MAX SCHAR_MIN UCHAR_MAX SHRT_MAX SHRT_MIN USHRT_MAX
    INT_MAX INT_MIN UINT_MAX LONG_MAX LONG_MIN ULONG_MAX LLONG_MAX LLONG_MIN ULLONG_MAX
    SIZE_MAX PTRDIFF_MAX PTRDIFF_MIN INTPTR_MAX UINTPTR_MAX INTMAX_MAX UINTMAX_MAX
    INT8_MAX INT16_MAX INT32_MAX INT64_MAX INT8_MIN INT16_MIN INT32_MIN INT64_MIN
    UINT8_MAX UINT16_MAX UINT32_MAX UINT64_MAX WCHAR_MAX WCHAR_MIN
    bool true false __bool_true_false_are_defined
    complex imaginary
""")



def _toolchain_macros() -> frozenset:
    """The macros the real toolchains define after the generated code's includes
    (reserved_c_macros.txt: nvcc over the .cu's, gcc over the C target's; PATH_MAX,
    CLOCK_REALTIME, INT_WIDTH, isascii(c), ...), taken from nvcc and gcc once and
    checked in; tests/test_hostile_spec.py regenerates it and checks it is covered."""
    from importlib.resources import files
    text = files(__package__).joinpath("reserved_c_macros.txt").read_text(encoding="ascii")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


C_MACROS |= _toolchain_macros()

# Prefixes of macro families (M_PI, M_PIl, FP_NAN, FLT_MAX, REG_RIP, HUGE_VAL_F64...).
C_MACRO_PREFIXES = ("M_", "FP_", "FLT_", "DBL_", "LDBL_", "REG_", "HUGE_VAL", "SNAN",
                    "__")

# Functions and types of the C library headers the generated code includes.
# (POSIX extras that no generated code calls, such as the Bessel functions y0, y1,
# j0, are left to the spec's author: a local name may shadow a function.)
_MATH = """
    acos asin atan atan2 cos sin tan acosh asinh atanh cosh sinh tanh exp exp2 expm1
    frexp ilogb ldexp log log10 log1p log2 logb modf scalbn scalbln cbrt fabs hypot pow
    sqrt erf erfc lgamma tgamma ceil floor nearbyint rint lrint llrint round lround
    llround trunc fmod remainder remquo copysign nan nextafter nexttoward fdim fmax fmin fma
"""
C_LIBRARY = _words(_MATH) | frozenset(f + s for f in _MATH.split() for s in ("f", "l")) | _words("""
    abs labs llabs div ldiv lldiv atof atoi atol atoll strtod strtof strtold strtol
    strtoll strtoul strtoull rand srand malloc calloc realloc free aligned_alloc abort
    exit _Exit atexit quick_exit at_quick_exit getenv system bsearch qsort mblen mbtowc
    wctomb mbstowcs wcstombs
    memcpy memmove memset memcmp memchr strcpy strncpy strcat strncat strcmp strncmp
    strchr strrchr strlen strstr strtok strerror strspn strcspn strpbrk strcoll strxfrm
    strdup strndup
    printf fprintf sprintf snprintf scanf fscanf sscanf vprintf vfprintf vsprintf
    vsnprintf puts fputs putchar getchar fgets fopen freopen fclose fread fwrite fflush
    remove rename tmpfile tmpnam perror getc putc fgetc fputc ungetc feof ferror clearerr
    fseek ftell rewind fgetpos fsetpos setbuf setvbuf
    FILE fpos_t size_t ssize_t ptrdiff_t max_align_t nullptr_t wint_t div_t ldiv_t
    lldiv_t float_t double_t intptr_t uintptr_t intmax_t uintmax_t
    int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t
""")

# Identifiers the C and CUDA printers emit beside the spec's names (targets/cuda/printer.py
# and targets/cuda/module.cu.j2: the element type, the workspace, the loss output, the
# kernel namespace, the launch and error-check macros).
C_GENERATED = _words("""
    real ws N loss_out kernels LAUNCH CHECK_CUDA CHECK_CUBLAS CHECK check
    tanhf expf logf log1pf sinf cosf sqrtf fabsf fmaxf fminf powf
""")
C_GENERATED_PREFIXES = ("bp_", "BP_")

# ---------------------------------------------------------------------------
# CUDA: built-in variables and types, and the runtime's and cuBLAS's names

CUDA_BUILTINS = _words("""
    threadIdx blockIdx blockDim gridDim warpSize dim3 half half2 nv_bfloat16 nv_bfloat162
    atomicAdd atomicSub atomicMax atomicMin atomicExch atomicCAS atomicAnd atomicOr
    atomicXor atomicInc atomicDec min max rsqrt rsqrtf rcbrt sincos sincosf sinpi cospi
    exp10 normcdf normcdfinv erfinv erfcinv saturate clock clock64 printf assert
""")
CUDA_VECTOR_TYPE = re.compile(r"(u?char|u?short|u?int|u?long|u?longlong|float|double)[1-4]\Z")
CUDA_PREFIXES = ("cuda", "cublas", "CUBLAS_", "CUDA_", "CUDART_", "CU_", "NV_", "nv_", "__")


# ---------------------------------------------------------------------------
# The checks


def _python_collision(name: str) -> str | None:
    if name in PYTHON_KEYWORDS:
        return "a Python keyword"
    if name in GENERATED_NAMES:
        return "a name the generated Python code uses"
    if name in PYTHON_MODULES:
        return "a module name the generated Python imports or may import"
    if name in PYTHON_BUILTINS:
        return "a Python builtin"
    return None


def _c_collision(name: str) -> str | None:
    if name in C_KEYWORDS:
        return "a C/C++ keyword"
    if name in C_MACROS or name.startswith(C_MACRO_PREFIXES):
        return "a C macro (predefined, or of the standard headers)"
    if name in C_LIBRARY:
        return "a C library name"
    if name in C_GENERATED or name.startswith(C_GENERATED_PREFIXES):
        return "a name the generated C code uses"
    if "__" in name:
        return "reserved in C++ (it contains '__')"
    return None


def _cuda_collision(name: str) -> str | None:
    if name in CUDA_BUILTINS or CUDA_VECTOR_TYPE.match(name):
        return "a CUDA built-in name"
    if name.startswith(CUDA_PREFIXES):
        return "a prefix of the CUDA runtime's and cuBLAS's names (" + ", ".join(CUDA_PREFIXES) + ")"
    return _c_collision(name)


# target -> the function saying why a name cannot be used in its generated code
TARGETS = {"Python": _python_collision, "C": _c_collision, "CUDA": _cuda_collision}


def collisions(name: str) -> list:
    """[(target, why)] for every target whose generated code cannot use ``name``."""
    out = []
    for target, check in TARGETS.items():
        why = check(name)
        if why:
            out.append((target, why))
    return out


def _collision_reason(name: str) -> str | None:
    found = collisions(name)
    if not found:
        return None
    parts = []
    for why in dict.fromkeys(w for _, w in found):
        targets = [t for t, w in found if w == why]
        parts.append(f"{why} (target{'s' if len(targets) > 1 else ''} {' and '.join(targets)})")
    return "is reserved: " + "; ".join(parts)


def length_reason(name: str) -> str | None:
    from .limits import MAX_NAME_LENGTH
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long, over the limit MAX_NAME_LENGTH = {MAX_NAME_LENGTH}"
    return None


def keyword_reason(name: str) -> str | None:
    """Why ``name`` cannot be an identifier of the generated Python, C and CUDA (or None)."""
    if not name.isascii():
        return "is not ASCII (names are ASCII letters, digits and _)"
    if not IDENTIFIER.match(name):
        return "is not an identifier (ASCII letters, digits and _, not starting with a digit)"
    return length_reason(name) or _collision_reason(name)


# Modules a generated file must not shadow when it is imported from its directory
# (``name: pickle`` would write pickle.py, and every ``import pickle`` beside it,
# numpy's own included, would import the generated module instead).
COMMON_PACKAGES = frozenset("""
    numpy scipy sympy networkx jinja2 yaml torch jax jaxlib cupy tensorflow pandas
    sklearn matplotlib pytest conftest setuptools pip pkg_resources bpcompile
    hypothesis dask distributed numba cython Cython tqdm IPython sitecustomize
    usercustomize
""".split())


def module_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be the name of a generated module (None if it can)."""
    reason = keyword_reason(name)
    if reason:
        return reason
    if name in sys.stdlib_module_names or name in COMMON_PACKAGES:
        return (f"is a Python module's name: the generated {name}.py would shadow that module "
                "for every import made in its directory")
    return None


def reserved_reason(name: str, function_names=()) -> str | None:
    """Why ``name`` cannot name an input, param or graph node (None if it can)."""
    reason = keyword_reason(name)
    if reason:
        return reason
    if name.endswith(BAR_SUFFIX):
        return f"ends in '{BAR_SUFFIX}', which generated code reserves for adjoints"
    if TEMP_NAME.match(name):
        return "collides with the generated temporaries t0, t1, ..."
    if name.startswith("_"):
        return "starts with '_', which generated code reserves"
    if name in function_names:
        return "is the name of a function of the spec language"
    return None
