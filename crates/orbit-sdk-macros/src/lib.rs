//! `#[orbit_sdk::task]`: turns `async fn name(ctx: Context) -> Result<T, TaskError>` into a
//! handler value `name` whose code hash is the SHA-256 of the function's tokens, computed at
//! compile time. Comments and formatting do not change the hash; any change to the code does.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use sha2::{Digest, Sha256};
use syn::{ItemFn, parse_macro_input};

#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[task] takes no arguments; give an explicit version with TaskOptions::code_version",
        )
        .to_compile_error()
        .into();
    }
    let mut func = parse_macro_input!(item as ItemFn);
    if func.sig.asyncness.is_none() {
        return syn::Error::new_spanned(&func.sig, "#[task] needs an `async fn`")
            .to_compile_error()
            .into();
    }
    let hash: String = Sha256::digest(quote!(#func).to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = func.sig.ident.clone();
    let vis = func.vis.clone();
    let attrs = std::mem::take(&mut func.attrs);
    func.sig.ident = format_ident!("__orbit_handler");
    func.vis = syn::Visibility::Inherited;
    quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #name;

        impl ::orbit_sdk::Handler for #name {
            fn call(
                &self,
                ctx: ::orbit_sdk::Context,
            ) -> ::orbit_sdk::HandlerFuture {
                #func
                ::std::boxed::Box::pin(async move {
                    __orbit_handler(ctx).await.map(::core::convert::Into::into)
                })
            }

            fn code_hash(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::String::from(#hash))
            }
        }
    }
    .into()
}
