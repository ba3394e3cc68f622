//! Turning a `#[task]` function into a task struct and its impls.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type, Visibility,
};

use crate::attrs::{parse_attrs, Errors, TaskAttrs};

/// What a parameter of the task function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamKind {
    /// An ordinary argument, matched by position or by name.
    Named,
    /// `TaskContext`: the running call's context, not an argument.
    Context,
    /// `VarArgs`: the positional arguments beyond the named ones.
    VarArgs,
    /// `VarKwargs`: the keyword arguments not matched to a name.
    VarKwargs,
}

#[derive(Clone)]
pub(crate) struct Param {
    pub ident: Ident,
    pub ty: Type,
    pub kind: ParamKind,
}

/// The checked shape of a task function.
#[derive(Clone)]
pub(crate) struct TaskFn {
    pub vis: Visibility,
    pub ident: Ident,
    pub is_async: bool,
    pub params: Vec<Param>,
    /// `Output` of the task.
    pub output: Type,
    /// The function returns `Result<Output, E>`: its error is converted into `TaskError`.
    pub returns_result: bool,
}

/// Entry point, on `proc_macro2` types so that it can be unit-tested.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let attrs = parse_attrs(attr).map_err(|e| errors.push(e)).ok();
    let func: ItemFn = syn::parse2(item)?;
    let task = analyze(&func).map_err(|e| errors.push(e)).ok();
    errors.finish()?;
    let (Some(attrs), Some(task)) = (attrs, task) else {
        unreachable!("errors were reported above")
    };
    Ok(generate(&attrs, &task, func))
}

/// The last path segment of a type, looking through groups and parentheses.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

fn kind_of(ty: &Type) -> ParamKind {
    match last_segment(ty).map(|s| s.ident.to_string()).as_deref() {
        Some("TaskContext") => ParamKind::Context,
        Some("VarArgs") => ParamKind::VarArgs,
        Some("VarKwargs") => ParamKind::VarKwargs,
        _ => ParamKind::Named,
    }
}

/// Types that cannot be a field of a `'static` struct sent over the wire.
fn check_owned(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::Reference(r) => Err(syn::Error::new_spanned(
            r,
            "task parameters are stored in the task struct and sent as JSON: use an owned type \
             (e.g. `String` instead of `&str`, `Vec<T>` instead of `&[T]`)",
        )),
        Type::ImplTrait(t) => Err(syn::Error::new_spanned(
            t,
            "task parameters cannot be `impl Trait`: name a concrete type",
        )),
        Type::Group(g) => check_owned(&g.elem),
        Type::Paren(p) => check_owned(&p.elem),
        _ => Ok(()),
    }
}

pub(crate) fn analyze(func: &ItemFn) -> syn::Result<TaskFn> {
    let sig = &func.sig;
    let mut errors = Errors::default();
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "task functions cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "task functions cannot have an `extern` ABI",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span: &dyn quote::ToTokens = if sig.generics.params.is_empty() {
            &sig.generics.where_clause
        } else {
            &sig.generics
        };
        errors.push(syn::Error::new_spanned(
            span,
            "task functions cannot be generic: a task has one name and one set of argument \
             types; write a task per type",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            "task functions cannot be C-variadic; use a `VarArgs` parameter for `*args`",
        ));
    }

    let mut params = Vec::new();
    let seen_kind = |kind: ParamKind, ty: &Type, errors: &mut Errors, params: &[Param]| {
        let what = match kind {
            ParamKind::Named => return,
            ParamKind::Context => "`TaskContext`",
            ParamKind::VarArgs => "`VarArgs`",
            ParamKind::VarKwargs => "`VarKwargs`",
        };
        if params.iter().any(|p| p.kind == kind) {
            errors.push(syn::Error::new_spanned(
                ty,
                format!("a task function takes at most one {what} parameter"),
            ));
        }
    };
    for input in &sig.inputs {
        let pat_ty = match input {
            FnArg::Receiver(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    "a task is a free function: `self` parameters are not allowed",
                ));
                continue;
            }
            FnArg::Typed(t) => t,
        };
        let ident = match &*pat_ty.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "task parameters must be plain identifiers (`name: Type`): each one becomes \
                     a field of the task struct and an argument name",
                ));
                continue;
            }
        };
        if ident == "_" {
            errors.push(syn::Error::new_spanned(
                &ident,
                "task parameters need a name: each one becomes a field and an argument name",
            ));
            continue;
        }
        let ty = (*pat_ty.ty).clone();
        if let Err(e) = check_owned(&ty) {
            errors.push(e);
            continue;
        }
        let kind = kind_of(&ty);
        seen_kind(kind, &ty, &mut errors, &params);
        params.push(Param { ident, ty, kind });
    }

    let (output, returns_result) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match output_of(ty) {
            Ok(o) => o,
            Err(e) => {
                errors.push(e);
                (syn::parse_quote!(()), false)
            }
        },
    };
    errors.finish()?;
    Ok(TaskFn {
        vis: func.vis.clone(),
        ident: sig.ident.clone(),
        is_async: sig.asyncness.is_some(),
        params,
        output,
        returns_result,
    })
}

/// `Result<T, E>` (or any `...::Result<T, ..>`) gives `(T, true)`; any other type `(ty, false)`.
fn output_of(ty: &Type) -> syn::Result<(Type, bool)> {
    if let Type::ImplTrait(t) = ty {
        return Err(syn::Error::new_spanned(
            t,
            "a task's output is stored as JSON and decoded by callers: name the type instead of \
             `impl Trait`",
        ));
    }
    let Some(seg) = last_segment(ty) else {
        return Ok((ty.clone(), false));
    };
    if seg.ident != "Result" {
        return Ok((ty.clone(), false));
    }
    if let PathArguments::AngleBracketed(args) = &seg.arguments {
        if let Some(GenericArgument::Type(t)) = args.args.first() {
            return Ok((t.clone(), true));
        }
    }
    Err(syn::Error::new_spanned(
        ty,
        "cannot tell the task's output type from a `Result` without generic arguments; write \
         `Result<T, E>`",
    ))
}

fn generate(attrs: &TaskAttrs, task: &TaskFn, mut func: ItemFn) -> TokenStream {
    let TaskFn {
        vis,
        ident,
        is_async,
        params,
        output,
        returns_result,
    } = task;
    let body_ident = format_ident!("__celeriac_body_{}", ident.unraw());

    // Attributes: `cfg` goes on everything, docs also on the struct, everything stays on
    // the body function.
    let cfgs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .cloned()
        .collect();
    let docs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();

    // The user's function, renamed and private; its body and spans are untouched.
    func.sig.ident = body_ident.clone();
    func.vis = Visibility::Inherited;

    let args: Vec<&Param> = params
        .iter()
        .filter(|p| p.kind != ParamKind::Context)
        .collect();
    let fields: Vec<&Ident> = args.iter().map(|p| &p.ident).collect();
    let field_tys: Vec<&Type> = args.iter().map(|p| &p.ty).collect();
    let named: Vec<&Param> = params
        .iter()
        .filter(|p| p.kind == ParamKind::Named)
        .collect();
    let named_strs: Vec<String> = named.iter().map(|p| p.ident.unraw().to_string()).collect();

    let name_expr = match &attrs.name {
        Some(lit) => quote!(#lit),
        None => default_name(&ident.unraw().to_string()),
    };
    let aliases = &attrs.aliases;
    let aliases_item = (!aliases.is_empty())
        .then(|| quote!(const ALIASES: &'static [&'static str] = &[#(#aliases),*];));
    let options = attrs.options_tokens(!is_async);

    // from_call: named parameters by position or keyword, then the rest.
    let field_inits = args.iter().map(|p| {
        let f = &p.ident;
        let ty = &p.ty;
        match p.kind {
            ParamKind::Named => {
                let n = p.ident.unraw().to_string();
                quote_spanned! {ty.span()=>
                    #f: __celeriac_call.take::<#ty>(#n, ::core::stringify!(#ty))?
                }
            }
            ParamKind::VarArgs => quote! {
                #f: ::celeriac::core::task::VarArgs(__celeriac_call.take_rest_args())
            },
            ParamKind::VarKwargs => quote! {
                #f: ::celeriac::core::task::VarKwargs(__celeriac_call.take_rest_kwargs())
            },
            ParamKind::Context => unreachable!(),
        }
    });

    // to_call: named values in order, `VarArgs` spread after them, `VarKwargs` as keywords.
    let push_named = named.iter().map(|p| {
        let f = &p.ident;
        quote! {
            __celeriac_args.push(
                ::celeriac::serde_json::to_value(&self.#f)
                    .unwrap_or(::celeriac::serde_json::Value::Null),
            );
        }
    });
    let push_rest = args.iter().filter_map(|p| {
        let f = &p.ident;
        match p.kind {
            ParamKind::VarArgs => Some(quote! {
                __celeriac_args.extend(self.#f.0.iter().cloned());
            }),
            ParamKind::VarKwargs => Some(quote! {
                __celeriac_kwargs.extend(
                    self.#f.0.iter().map(|(k, v)| (::core::clone::Clone::clone(k), ::core::clone::Clone::clone(v))),
                );
            }),
            _ => None,
        }
    });
    let n_named = named.len();
    let has_varargs = args.iter().any(|p| p.kind == ParamKind::VarArgs);
    let kwargs_mut = args
        .iter()
        .any(|p| p.kind == ParamKind::VarKwargs)
        .then(|| quote!(mut));

    // run: call the body with the context and the fields, in the function's order.
    let has_ctx = params.iter().any(|p| p.kind == ParamKind::Context);
    let ctx_pat = if has_ctx {
        quote!(__celeriac_ctx)
    } else {
        quote!(_)
    };
    let call_args = params.iter().map(|p| match p.kind {
        ParamKind::Context => quote!(__celeriac_ctx),
        _ => {
            let f = &p.ident;
            quote!(#f)
        }
    });
    let wrap = |call: TokenStream| {
        if *returns_result {
            quote!(::core::result::Result::map_err(#call, ::core::convert::Into::into))
        } else {
            quote!(::core::result::Result::Ok(#call))
        }
    };
    let call_args: Vec<TokenStream> = call_args.collect();
    // A plain `fn` awaited through `run` is called inline; the worker calls `body` instead,
    // which hands the call to a pool thread (or a child process) that may block.
    let run_body = if *is_async {
        wrap(quote!(#body_ident(#(#call_args),*).await))
    } else {
        wrap(quote!(#body_ident(#(#call_args),*)))
    };
    let blocking_body = (!*is_async).then(|| {
        quote! {
            #[allow(clippy::useless_conversion)]
            fn body(
                self,
                #ctx_pat: ::celeriac::core::task::TaskContext,
            ) -> ::celeriac::core::task::TaskBody<Self::Output> {
                ::celeriac::core::task::TaskBody::Blocking(::std::boxed::Box::new(move || {
                    let #ident { #(#fields),* } = self;
                    #run_body
                }))
            }
        }
    });

    // Caller helpers: `s(..)` and `delay(app, ..)`.
    let app_ident = if fields.iter().any(|f| *f == "app") {
        format_ident!("__celeriac_app")
    } else {
        format_ident!("app")
    };
    let s_doc = format!(
        " A signature of this task with these arguments, to send (`apply_async`) or to chain.\n\n \
         Equivalent to `Signature::new({ident} {{ .. }})`."
    );
    let delay_doc = " Sends this task with these arguments, as Celery's `delay`: \
                     `Self::s(..).apply_async(app)`."
        .to_string();

    quote! {
        #(#cfgs)*
        #(#docs)*
        #[allow(non_camel_case_types)]
        #vis struct #ident {
            #(pub #fields: #field_tys,)*
        }

        #(#cfgs)*
        #func

        #(#cfgs)*
        #[allow(clippy::too_many_arguments)]
        impl #ident {
            #[doc = #s_doc]
            pub fn s(#(#fields: #field_tys),*) -> ::celeriac::Signature<#ident> {
                ::celeriac::Signature::new(#ident { #(#fields),* })
            }

            /// An immutable signature (Celery's `.si()`): in a workflow, no parent's result
            /// is passed to it.
            pub fn si(#(#fields: #field_tys),*) -> ::celeriac::canvas::Sig<<#ident as ::celeriac::core::task::Task>::Output> {
                Self::s(#(#fields),*).si()
            }

            /// This task applied to each item of `it`, in one task (Celery's `task.map(it)`).
            pub fn map<__CeleriacItem: ::celeriac::serde::Serialize>(
                it: impl ::core::iter::IntoIterator<Item = __CeleriacItem>,
            ) -> ::core::result::Result<
                ::celeriac::canvas::Sig<::std::vec::Vec<<#ident as ::celeriac::core::task::Task>::Output>>,
                ::celeriac::Error,
            > {
                ::celeriac::canvas::Sig::map::<Self>(it)
            }

            /// This task called with each item of `it` as its arguments, in one task
            /// (Celery's `task.starmap(it)`).
            pub fn starmap<__CeleriacItem: ::celeriac::serde::Serialize>(
                it: impl ::core::iter::IntoIterator<Item = __CeleriacItem>,
            ) -> ::core::result::Result<
                ::celeriac::canvas::Sig<::std::vec::Vec<<#ident as ::celeriac::core::task::Task>::Output>>,
                ::celeriac::Error,
            > {
                ::celeriac::canvas::Sig::starmap::<Self>(it)
            }

            /// `it` split into tasks of `n` calls each (Celery's `task.chunks(it, n)`).
            pub fn chunks<__CeleriacItem: ::celeriac::serde::Serialize>(
                it: impl ::core::iter::IntoIterator<Item = __CeleriacItem>,
                n: usize,
            ) -> ::core::result::Result<
                ::celeriac::canvas::Group<::std::vec::Vec<<#ident as ::celeriac::core::task::Task>::Output>>,
                ::celeriac::Error,
            > {
                ::celeriac::canvas::chunks::<Self>(it, n)
            }

            #[doc = #delay_doc]
            pub async fn delay(
                #app_ident: &::celeriac::App,
                #(#fields: #field_tys),*
            ) -> ::core::result::Result<
                ::celeriac::AsyncResult<<#ident as ::celeriac::core::task::Task>::Output>,
                ::celeriac::Error,
            > {
                Self::s(#(#fields),*).apply_async(#app_ident).await
            }
        }

        #(#cfgs)*
        impl ::celeriac::core::task::Task for #ident {
            const NAME: &'static str = #name_expr;
            #aliases_item
            const PARAMS: &'static [&'static str] = &[#(#named_strs),*];
            const VARARGS: bool = #has_varargs;
            type Output = #output;

            fn options() -> ::celeriac::core::task::TaskOptions {
                #options
            }

            fn from_call(
                __celeriac_args: ::std::vec::Vec<::celeriac::serde_json::Value>,
                __celeriac_kwargs: ::celeriac::serde_json::Map<::std::string::String, ::celeriac::serde_json::Value>,
            ) -> ::core::result::Result<Self, ::celeriac::core::task::ArgError> {
                let mut __celeriac_call = ::celeriac::core::task::CallArgs::new(
                    <Self as ::celeriac::core::task::Task>::NAME,
                    __celeriac_args,
                    __celeriac_kwargs,
                    &[#(#named_strs),*],
                )?;
                let __celeriac_task = #ident {
                    #(#field_inits,)*
                };
                // Leftover positional or keyword arguments that no parameter takes.
                __celeriac_call.finish()?;
                ::core::result::Result::Ok(__celeriac_task)
            }

            fn to_call(
                &self,
            ) -> (
                ::std::vec::Vec<::celeriac::serde_json::Value>,
                ::celeriac::serde_json::Map<::std::string::String, ::celeriac::serde_json::Value>,
            ) {
                let mut __celeriac_args = ::std::vec::Vec::with_capacity(#n_named);
                #[allow(unused_mut)]
                let #kwargs_mut __celeriac_kwargs = ::celeriac::serde_json::Map::new();
                #(#push_named)*
                #(#push_rest)*
                (__celeriac_args, __celeriac_kwargs)
            }

            #[allow(clippy::useless_conversion)]
            async fn run(
                self,
                #ctx_pat: ::celeriac::core::task::TaskContext,
            ) -> ::core::result::Result<Self::Output, ::celeriac::core::task::TaskError> {
                let #ident { #(#fields),* } = self;
                #run_body
            }

            #blocking_body
        }
    }
}

/// The default task name, computed at compile time: the last segment of `module_path!()`,
/// a dot, and the function name (`tasks.add`; `mycrate.add` at a crate's root).
fn default_name(fn_name: &str) -> TokenStream {
    let span = Span::call_site();
    quote_spanned! {span=> {
        const __CELERIAC_MODULE: &str = ::core::module_path!();
        const __CELERIAC_FN: &str = #fn_name;
        /// Where the last segment of a `a::b::c` path starts.
        const fn __celeriac_last_segment(path: &[u8]) -> usize {
            let mut i = path.len();
            while i >= 2 {
                if path[i - 1] == b':' && path[i - 2] == b':' {
                    return i;
                }
                i -= 1;
            }
            0
        }
        const __CELERIAC_START: usize = __celeriac_last_segment(__CELERIAC_MODULE.as_bytes());
        const __CELERIAC_LEN: usize =
            __CELERIAC_MODULE.len() - __CELERIAC_START + 1 + __CELERIAC_FN.len();
        const __CELERIAC_BYTES: [u8; __CELERIAC_LEN] = {
            let module = __CELERIAC_MODULE.as_bytes();
            let func = __CELERIAC_FN.as_bytes();
            let mut out = [0u8; __CELERIAC_LEN];
            let mut i = 0;
            while __CELERIAC_START + i < module.len() {
                out[i] = module[__CELERIAC_START + i];
                i += 1;
            }
            out[i] = b'.';
            let mut j = 0;
            while j < func.len() {
                out[i + 1 + j] = func[j];
                j += 1;
            }
            out
        };
        match ::core::str::from_utf8(&__CELERIAC_BYTES) {
            ::core::result::Result::Ok(name) => name,
            ::core::result::Result::Err(_) => ::core::panic!("task name is not UTF-8"),
        }
    }}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze_str(s: &str) -> syn::Result<TaskFn> {
        analyze(&syn::parse_str(s).unwrap())
    }

    fn err(s: &str) -> String {
        analyze_str(s).err().unwrap().to_string()
    }

    #[test]
    fn plain_async_task() {
        let t = analyze_str("pub async fn add(x: i64, y: i64) -> i64 { x + y }").unwrap();
        assert!(t.is_async && !t.returns_result);
        assert_eq!(t.ident, "add");
        assert!(matches!(t.vis, Visibility::Public(_)));
        let names: Vec<_> = t.params.iter().map(|p| p.ident.to_string()).collect();
        assert_eq!(names, ["x", "y"]);
        assert!(t.params.iter().all(|p| p.kind == ParamKind::Named));
        let out = &t.output;
        assert_eq!(quote!(#out).to_string(), "i64");
    }

    #[test]
    fn result_output_and_context() {
        let t = analyze_str(
            "fn flaky(ctx: celeriac::TaskContext, mut n: u32) -> Result<u32, TaskError> { Ok(n) }",
        )
        .unwrap();
        assert!(!t.is_async && t.returns_result);
        assert_eq!(t.params[0].kind, ParamKind::Context);
        assert_eq!(t.params[1].kind, ParamKind::Named);
        let out = &t.output;
        assert_eq!(quote!(#out).to_string(), "u32");

        let t = analyze_str("fn f() -> std::io::Result<Vec<u8>> { loop {} }").unwrap();
        let out = &t.output;
        assert_eq!(quote!(#out).to_string(), "Vec < u8 >");
        assert!(t.returns_result);

        let t = analyze_str("fn f() {}").unwrap();
        let out = &t.output;
        assert_eq!(quote!(#out).to_string(), "()");
        assert!(!t.returns_result);
    }

    #[test]
    fn variadics() {
        let t = analyze_str("async fn echo(args: VarArgs, kwargs: VarKwargs) -> Value { loop {} }")
            .unwrap();
        assert_eq!(t.params[0].kind, ParamKind::VarArgs);
        assert_eq!(t.params[1].kind, ParamKind::VarKwargs);
    }

    #[test]
    fn rejected_shapes() {
        assert!(err("fn f<T>(x: T) {}").starts_with("task functions cannot be generic"));
        assert!(
            err("fn f(x: u8) where u8: Copy {}").starts_with("task functions cannot be generic")
        );
        assert!(err("fn f(&self) {}").contains("`self` parameters are not allowed"));
        assert!(err("fn f((a, b): (u8, u8)) {}")
            .starts_with("task parameters must be plain identifiers"));
        assert!(err("fn f(ref a: u8) {}").starts_with("task parameters must be plain identifiers"));
        assert!(err("fn f(_: u8) {}").starts_with("task parameters must be plain identifiers"));
        assert_eq!(
            err("fn f(a: TaskContext, b: TaskContext) {}"),
            "a task function takes at most one `TaskContext` parameter"
        );
        assert!(err("fn f(a: &str) {}").starts_with("task parameters are stored"));
        assert!(err("unsafe fn f() {}").starts_with("task functions cannot be `unsafe`"));
        assert!(err("fn f() -> impl Sized {}").starts_with("a task's output"));
        let e = analyze_str("fn f<T>(&self, (a, b): u8) {}").err().unwrap();
        assert_eq!(e.into_iter().count(), 3, "all errors at once");
    }

    #[test]
    fn expansion_is_valid_rust() {
        for (attr, item) in [
            ("", "async fn add(x: i64, y: i64) -> i64 { x + y }"),
            (
                r#"name = "tasks.flaky", max_retries = 5, rate_limit = "10/s""#,
                "pub(crate) fn flaky(ctx: TaskContext, n: u32) -> Result<u32, TaskError> { Ok(n) }",
            ),
            (
                r#"name = "tasks.echo", aliases = ["old.echo"]"#,
                "async fn echo(app: i64, args: VarArgs, kwargs: VarKwargs) -> Value { loop {} }",
            ),
        ] {
            let out = expand(attr.parse().unwrap(), item.parse().unwrap()).unwrap();
            let file: syn::File = syn::parse2(out.clone()).unwrap_or_else(|e| panic!("{e}\n{out}"));
            // struct, body fn, inherent impl, Task impl
            assert_eq!(file.items.len(), 4, "{out}");
        }
    }
}
