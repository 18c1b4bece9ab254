//! The `#[handler]` attribute of `wasmgate-sdk`; use it through
//! `wasmgate_sdk::handler`, never directly.
//!
//! The attribute leaves the user's function untouched and adds, in a hidden
//! `const _: () = { ... };` block, the glue that exports it as the
//! component's `handle` function. Every path it emits is fully qualified
//! (`::wasmgate_sdk::...`), so the handler crate needs no other imports and no
//! dependency besides `wasmgate-sdk`.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Item, ItemFn, ReturnType};

/// Exports a function as the component's request handler.
///
/// The function must look like `fn NAME(req: Request) -> impl IntoResponse`:
/// one argument of type `wasmgate_sdk::Request` (any pattern), a return type
/// implementing `wasmgate_sdk::IntoResponse` (or `wasmgate_sdk::RawResponse`),
/// not `async`, not generic, no `self`. Exactly one function per component
/// may carry the attribute.
///
/// See the `wasmgate_sdk` crate documentation for an example.
#[proc_macro_attribute]
pub fn handler(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    let item = TokenStream2::from(item);
    expand(attr.into(), item.clone())
        .unwrap_or_else(|err| with_item(err, item))
        .into()
}

/// The error, and the user's item unchanged: without the item, everything
/// it uses (imports, helpers) would be reported unused on top of the error.
fn with_item(err: syn::Error, item: TokenStream2) -> TokenStream2 {
    let mut out = err.into_compile_error();
    out.extend(item);
    out
}

/// The whole macro, on `proc_macro2` tokens so unit tests can call it.
fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[handler]` takes no arguments",
        ));
    }
    let func = match syn::parse2::<Item>(item)? {
        Item::Fn(func) => func,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "`#[handler]` must be placed on a function `fn NAME(req: Request) -> impl IntoResponse`",
            ));
        }
    };
    check_signature(&func)?;

    let name = &func.sig.ident;
    let (arg_ty_span, ret_span) = match (&func.sig.inputs[0], &func.sig.output) {
        (FnArg::Typed(arg), ReturnType::Type(_, ret)) => (arg.ty.span(), ret.span()),
        // `check_signature` rejected both.
        _ => (func.sig.inputs.span(), func.sig.output.span()),
    };
    // Located at the user's argument and return types so a type mismatch or a
    // missing `IntoResponse` impl is reported on the user's signature, not on
    // the attribute; resolved at the call site so `req`/`resp` stay hygienic
    // even when the handler itself comes out of a `macro_rules!`.
    let arg_ty_span = Span::call_site().located_at(arg_ty_span);
    let ret_span = Span::call_site().located_at(ret_span);
    let call = quote_spanned! {arg_ty_span=>
        #name(::wasmgate_sdk::__private::request_from_wit(req))
    };
    let lower = quote_spanned! {ret_span=>
        ::wasmgate_sdk::__private::into_wit_response(resp)
    };

    Ok(quote! {
        #func

        // The export glue writes `#[unsafe(export_name)]` functions and a
        // `#[link_section]` static: allowed here only, not in the user's code.
        #[doc(hidden)]
        #[allow(unsafe_code)]
        const _: () = {
            struct __WasmgateHandler;

            impl ::wasmgate_sdk::__private::Guest for __WasmgateHandler {
                fn handle(
                    req: ::wasmgate_sdk::__private::WitRequest,
                ) -> ::wasmgate_sdk::__private::WitResponse {
                    let resp = #call;
                    #lower
                }
            }

            ::wasmgate_sdk::__private::export!(__WasmgateHandler);
        };
    })
}

/// Rejects every signature the glue cannot call, pointing at the culprit.
fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            token,
            "a wasmgate handler cannot be `async`: each request runs to completion synchronously",
        ));
    }
    if let Some(token) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            token,
            "a wasmgate handler cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "a wasmgate handler cannot declare an ABI: the export glue is generated",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a wasmgate handler cannot be generic",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "a wasmgate handler cannot be variadic",
        ));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            receiver,
            "a wasmgate handler is a free function: remove `self`",
        ));
    }
    match sig.inputs.len() {
        1 => {}
        0 => {
            return Err(syn::Error::new_spanned(
                sig,
                "a wasmgate handler takes exactly one argument: `req: wasmgate_sdk::Request`",
            ));
        }
        _ => {
            return Err(syn::Error::new_spanned(
                &sig.inputs,
                "a wasmgate handler takes exactly one argument: `req: wasmgate_sdk::Request`",
            ));
        }
    }
    if let FnArg::Receiver(receiver) = &sig.inputs[0] {
        return Err(syn::Error::new_spanned(
            receiver,
            "a wasmgate handler is a free function: remove `self`",
        ));
    }
    if matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new_spanned(
            sig,
            "a wasmgate handler must return a response: add `-> impl wasmgate_sdk::IntoResponse`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn error(attr: TokenStream2, item: TokenStream2) -> String {
        match expand(attr, item) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(err) => err.to_string(),
        }
    }

    fn reject(item: TokenStream2) -> String {
        error(TokenStream2::new(), item)
    }

    #[test]
    fn accepts_a_plain_handler_and_keeps_it() {
        let item: ItemFn = parse_quote! {
            /// Docs stay.
            fn my_handler(mut request: wasmgate_sdk::Request) -> impl wasmgate_sdk::IntoResponse {
                "hi"
            }
        };
        let out = expand(TokenStream2::new(), quote!(#item)).expect("valid handler");
        let out = out.to_string();
        assert!(out.starts_with(&quote!(#item).to_string()), "{out}");
        assert!(out.contains("impl :: wasmgate_sdk :: __private :: Guest for __WasmgateHandler"));
        assert!(
            out.contains("my_handler (:: wasmgate_sdk :: __private :: request_from_wit (req))")
        );
        assert!(out.contains(":: wasmgate_sdk :: __private :: export ! (__WasmgateHandler)"));
        assert!(out.contains("allow (unsafe_code)"));
    }

    #[test]
    fn output_parses_as_items() {
        let out = expand(
            TokenStream2::new(),
            quote!(
                fn h(_: Request) -> StatusCode {
                    StatusCode::OK
                }
            ),
        )
        .expect("valid handler");
        let file: syn::File = syn::parse2(out).expect("items");
        assert_eq!(file.items.len(), 2);
    }

    #[test]
    fn an_error_keeps_the_item_so_its_imports_stay_used() {
        let item = quote!(
            async fn h(r: Request) -> Response {
                helper(r)
            }
        );
        let err = expand(TokenStream2::new(), item.clone()).expect_err("async");
        let out = with_item(err, item.clone()).to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.ends_with(&item.to_string()), "{out}");
    }

    #[test]
    fn rejects_attribute_arguments() {
        let msg = error(
            quote!(route = "/x"),
            quote!(
                fn h(r: Request) -> Response {
                    r
                }
            ),
        );
        assert!(msg.contains("takes no arguments"), "{msg}");
    }

    #[test]
    fn rejects_non_functions() {
        let msg = reject(quote!(
            struct Handler;
        ));
        assert!(msg.contains("must be placed on a function"), "{msg}");
    }

    #[test]
    fn rejects_async() {
        let msg = reject(quote!(
            async fn h(r: Request) -> Response {
                r
            }
        ));
        assert!(msg.contains("cannot be `async`"), "{msg}");
    }

    #[test]
    fn rejects_unsafe_and_extern() {
        let msg = reject(quote!(
            unsafe fn h(r: Request) -> Response {
                r
            }
        ));
        assert!(msg.contains("cannot be `unsafe`"), "{msg}");
        let msg = reject(quote!(
            extern "C" fn h(r: Request) -> Response {
                r
            }
        ));
        assert!(msg.contains("cannot declare an ABI"), "{msg}");
    }

    #[test]
    fn rejects_generics() {
        let msg = reject(quote!(
            fn h<T>(r: Request) -> Response {
                r
            }
        ));
        assert!(msg.contains("cannot be generic"), "{msg}");
        let msg = reject(quote!(
            fn h(r: Request) -> Response
            where
                Request: Sized,
            {
                r
            }
        ));
        assert!(msg.contains("cannot be generic"), "{msg}");
        let msg = reject(quote!(
            fn h<'a>(r: Request) -> Response {
                r
            }
        ));
        assert!(msg.contains("cannot be generic"), "{msg}");
    }

    #[test]
    fn rejects_wrong_argument_counts() {
        let msg = reject(quote!(
            fn h() -> Response {
                todo!()
            }
        ));
        assert!(msg.contains("exactly one argument"), "{msg}");
        let msg = reject(quote!(
            fn h(a: Request, b: u32) -> Response {
                a
            }
        ));
        assert!(msg.contains("exactly one argument"), "{msg}");
    }

    #[test]
    fn rejects_self() {
        let msg = reject(quote!(
            fn h(self) -> Response {
                todo!()
            }
        ));
        assert!(msg.contains("remove `self`"), "{msg}");
        let msg = reject(quote!(
            fn h(&self, r: Request) -> Response {
                r
            }
        ));
        assert!(msg.contains("remove `self`"), "{msg}");
    }

    #[test]
    fn rejects_missing_return_type() {
        let msg = reject(quote!(
            fn h(r: Request) {}
        ));
        assert!(msg.contains("must return a response"), "{msg}");
    }
}
