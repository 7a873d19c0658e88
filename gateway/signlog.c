/* stub: being written */
typedef int veil_stub_signlog;
